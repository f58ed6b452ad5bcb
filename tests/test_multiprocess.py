"""Two processes on localhost (jax.distributed over the CPU's gloo collectives, one device
each) train ToyWorld tiny through `main`, from a fresh workdir (process 0 generates the corpus,
process 1 waits for it), and end with the loss of one process that builds the same global
batches itself (process p's rows are those of BatchIterator(process_index=p))."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 6
OVERRIDES = [f"--config.train.steps={STEPS}", f"--config.train.log_every={STEPS}",
             "--config.train.checkpoint_every=3", "--config.eval.batches=0", "--config.data.prefetch=0"]


def one_process_reference(manifest: str) -> dict:
    """Runs with 2 local devices: both processes' rows in one global batch, same steps."""
    from bertgen_jax import optim, sharding, step as step_lib
    from bertgen_jax.data import datasets
    from bertgen_jax.data.pipeline import BatchIterator, Stream
    from bertgen_jax.data.rows import RowSpec
    from bertgen_jax.reporting import summarize
    from bertgen_jax.train import _init_model, _stack
    from tests.conftest import tiny_config

    config = tiny_config(manifest, **{"train.steps": STEPS})
    budgets = dict(config.data.budgets)
    data = datasets.load(config.data, "/unused", budgets.__getitem__, splits=("train",))
    streams = [Stream(s.name, s.pairs) for s in data.splits["train"]]
    spec = RowSpec(config.data.row_length, config.data.targets_per_row, config.data.regions_per_row,
                   data.store.feature_dim)
    local = config.batch.rows_per_device  # 2 devices, 2 processes: rows per device = rows per process
    iterators = [BatchIterator(streams, data.store, spec, local, config.data.mode, budgets, seed=config.seed,
                               process_index=p, process_count=2, window=config.data.window) for p in range(2)]
    model, _, _ = _init_model(config, len(data.tokenizer), data.store.feature_dim)
    mesh = sharding.make_mesh()
    lr = optim.schedule(optim.peak_learning_rate(config.optim, 2 * local), config.optim.warmup_steps, STEPS)
    steps = step_lib.Steps(model, optim.make_optimizer(config.optim, lr), lr, mesh, len(streams), config.seed)
    params, opt_state = steps.place()
    stats = []
    for i in range(STEPS):
        parts = [next(it) for it in iterators]
        host = _stack([{k: np.concatenate([p[k] for p in parts]) for k in parts[0]}])
        params, opt_state, s = steps.train(params, opt_state, sharding.global_batch(host, mesh, 1), i)
        stats.append(s)
    return summarize(stats, [s.name for s in streams])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_from_a_fresh_workdir_end_with_the_one_process_loss(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    env.pop("XLA_FLAGS", None)
    port = free_port()
    workdir = tmp_path / "run"
    procs = [subprocess.Popen(
        [sys.executable, "-m", "bertgen_jax.main", "--config", "configs/multitask.py:tiny",
         "--workdir", str(workdir), f"--coordinator=localhost:{port}",
         "--num_processes=2", f"--process_id={p}", *OVERRIDES],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for p in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    assert "process 1 of 2" in outputs[1][1] and "process 0 of 2" in outputs[0][1]
    assert "generating ToyWorld tiny" in outputs[0][1] and "generating ToyWorld" not in outputs[1][1]
    manifest = str(workdir / "toyworld_tiny_0" / "manifest.json")
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["step"] == STEPS and summary["compiles"]["train"] == 1
    assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
    data_state = os.listdir(workdir / "checkpoints" / "6" / "data")
    assert len([f for f in data_state if "process_" in f]) == 2, data_state  # one iterator state per process

    code = ("import json, sys; sys.path.insert(0, %r); from tests.test_multiprocess import one_process_reference; "
            "print('RESULT', json.dumps(one_process_reference(%r)))" % (REPO, manifest))
    ref = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600,
                         env=dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=2"))
    assert ref.returncode == 0, ref.stderr[-3000:]
    want = json.loads(next(l for l in ref.stdout.splitlines() if l.startswith("RESULT "))[7:])
    assert want["targets"] == summary["train"]["targets"]  # the same examples
    assert summary["train"]["loss"] == pytest.approx(want["loss"], rel=1e-5)
    per_stream = {k: v for k, v in want.items() if k.startswith("loss/")}
    assert len(per_stream) >= 3 and per_stream.keys() == {k for k in summary["train"] if k.startswith("loss/")}
    assert {k: summary["train"][k] for k in per_stream} == pytest.approx(per_stream, rel=1e-5)
