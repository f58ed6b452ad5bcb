"""The trainer end to end on ToyWorld tiny: main's smoke run (events, checkpoint, loss down,
one compile), resume equivalence after SIGKILL, SIGTERM, NaN stop, gradient accumulation, and
the same loss on 8-device meshes as on one device."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from bertgen_jax import errors, toyworld
from bertgen_jax.reporting import tag_name
from tests.conftest import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("toyworld")
    toyworld.generate(str(root), seed=0, scale="tiny", progress=False)
    return str(root / "manifest.json")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Subprocess environment: CPU, and one persistent compilation cache, so the runs of this
    module compile the (identical) train step once between them."""
    cache = str(tmp_path_factory.mktemp("jax_cache"))
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO, JAX_COMPILATION_CACHE_DIR=cache,
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def scalars(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(logdir, size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def texts(logdir):
    """Text summaries: tag -> the last text written under it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(logdir, size_guidance={"tensors": 0})
    acc.Reload()
    return {tag.removesuffix("/text_summary"): acc.Tensors(tag)[-1].tensor_proto.string_val[0].decode()
            for tag in acc.Tags()["tensors"] if tag.startswith("samples/")}


def test_display_names_become_tensorboard_tags_and_non_finite_values_are_left_out(tmp_path):
    from bertgen_jax.reporting import Reporter
    reporter = Reporter(str(tmp_path), total_steps=1)
    reporter.scalars(3, {"bleu": 12.5, "cider": float("nan")}, "decode/mmt_en-de (shuffled images)")
    reporter.scalars(3, {"bleu": 0.25}, "decode/mt_de-fr (copy source)")
    reporter.writer.close()
    assert scalars(str(tmp_path)) == {"decode/mmt_en-de_shuffled_images/bleu": [(3, 12.5)],
                                      "decode/mt_de-fr_copy_source/bleu": [(3, 0.25)]}


def test_main_smoke_events_checkpoint_loss_down_one_compile(manifest, env, tmp_path):
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "bertgen_jax.main", "--config", "configs/multitask.py:tiny",
           "--workdir", str(workdir), f"--config.data.manifest={manifest}", "--config.train.steps=40",
           "--config.train.checkpoint_every=20", "--config.optim.lr=5e-3", "--config.eval.batches=4",
           "--config.eval.decode=True", "--config.eval.max_sentences=3", "--config.eval.samples=2",
           "--config.eval.decode_batch=4", "--config.eval.compare_beam=2"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "run finished at step 40" in done.stdout and "| all |" in done.stdout
    assert sorted(os.listdir(workdir / "checkpoints")) == ["20", "40"]
    assert {"data", "opt_state", "params"} <= set(os.listdir(workdir / "checkpoints" / "40"))
    tags = scalars(str(workdir / "tensorboard"))
    for tag in ("train/loss", "train/accuracy", "train/lr", "train/grad_norm", "train/examples_per_sec",
                "train/target_tokens_per_sec", "train/real_token_fraction", "train/compiles",
                "train/loss/ic_en", "train/accuracy/mt_en-de", "eval/loss", "eval/accuracy"):
        assert tag in tags, f"{tag} missing from {sorted(tags)}"
    assert [s for s, _ in tags["train/loss"]] == [5, 10, 15, 20, 25, 30, 35, 40]
    (first_step, before), (last_step, after) = tags["eval/loss"][0], tags["eval/loss"][-1]
    assert (first_step, last_step) == (0, 40)
    assert after < before - 0.5, tags["eval/loss"]
    assert before == pytest.approx(np.log(1400), abs=0.3)  # untrained: about uniform over the vocabulary
    assert {v for _, v in tags["train/compiles"]} == {1.0}
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["compiles"] == {"train": 1, "eval": 1}
    assert 0.5 < tags["train/real_token_fraction"][-1][1] <= 1.0
    # The final decode-and-score eval: a results row per test set and variant, its scalars, and
    # text samples of its first inputs.
    rows = json.loads((workdir / "eval" / "results.json").read_text())["evals"][-1]["rows"]
    assert {r["step"] for r in rows} == {40} and {"ic_fr", "mmt_de-fr (shuffled images)", "mt_fr-de (copy source)"} <= {r["name"] for r in rows}
    assert [r["name"] for r in summary["results"]] == [r["name"] for r in rows]
    by = {r["name"]: r for r in rows}  # eval.compare_beam: beam 2 beside greedy for every set
    assert {n for n in by if n.endswith(" (beam 2)")} == {f"{r['set']} (beam 2)" for r in rows}
    for name in ("ic_en", "mt_en-de", "mt_fr-de"):
        assert by[f"{name} (beam 2)"]["delta_bleu"] == pytest.approx(by[f"{name} (beam 2)"]["bleu"] - by[name]["bleu"])
        assert (workdir / "eval" / "hyps" / "40" / f"{name}.beam_2.txt").is_file()
    assert {f"decode/{tag_name(r['name'])}/bleu" for r in rows} <= set(tags)
    samples = texts(str(workdir / "tensorboard"))
    assert set(samples) == {f"samples/{tag_name(r['name'])}" for r in rows}
    mt = samples["samples/mt_en-de"]
    assert mt.count("**input**") == 2 and mt.count("**reference**") == 2, mt
    assert samples["samples/ic_en"].startswith("- **input** [image "), samples["samples/ic_en"]
    lr = dict(tags["train/lr"])
    assert lr[5] == pytest.approx(5e-3 * 2 / 5, rel=1e-5)  # warm-up steps 0..4 of 5: mean (0+1+2+3+4)/5 / 5 of peak


DRIVER = textwrap.dedent("""
    import json, logging, os, signal, sys
    sys.path.insert(0, {repo!r})
    logging.basicConfig(level=logging.INFO)
    from bertgen_jax import checkpoint, train
    from tests.conftest import tiny_config
    kill_at, term_at = {kill_at}, {term_at}
    save = checkpoint.Checkpoints.save
    def save_then_die(self, step, *args, **kwargs):
        saved = save(self, step, *args, **kwargs)
        if step == kill_at:
            self.wait()  # checkpoint durable, then die without any cleanup
            os.kill(os.getpid(), signal.SIGKILL)
        return saved
    checkpoint.Checkpoints.save = save_then_die
    stack, calls = train._stack, [0]
    def stack_and_signal(batches):
        calls[0] += 1
        if calls[0] == term_at:  # a real signal, delivered while this step runs
            os.kill(os.getpid(), signal.SIGTERM)
        return stack(batches)
    train._stack = stack_and_signal
    summary = train.run(tiny_config({manifest!r}, **{overrides!r}), {workdir!r})
    print("SUMMARY", json.dumps({{"status": summary["status"], "step": summary["step"]}}))
    print(train.results_table(summary))
""")


def drive(env, workdir, manifest, overrides, kill_at=-1, term_at=-1):
    code = DRIVER.format(repo=REPO, kill_at=kill_at, term_at=term_at, manifest=manifest,
                         overrides=overrides, workdir=str(workdir))
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


def final_params(workdir):
    """(step, params, opt_state) of the latest checkpoint in workdir, read back without a target."""
    import orbax.checkpoint as ocp
    directory = os.path.join(workdir, "checkpoints")
    step = max(int(s) for s in os.listdir(directory) if s.isdigit())
    reader = ocp.StandardCheckpointer()
    return (step, reader.restore(os.path.join(directory, str(step), "params")),
            reader.restore(os.path.join(directory, str(step), "opt_state")))


def assert_trees_equal(a, b):
    import jax
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_resume_after_sigkill_then_sigterm_equals_a_straight_run(manifest, env, tmp_path):
    overrides = {"train.steps": 16, "train.checkpoint_every": 8, "train.log_every": 4, "train.keep_checkpoints": 5}
    straight = drive(env, tmp_path / "straight", manifest, overrides)
    assert straight.returncode == 0, straight.stderr[-3000:]

    run = tmp_path / "interrupted"
    killed = drive(env, run, manifest, overrides, kill_at=8)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert sorted(os.listdir(run / "checkpoints")) == ["8"]
    # Resumed at 8; SIGTERM arrives during its 3rd step: save step 11, exit 0.
    termed = drive(env, run, manifest, overrides, term_at=3)
    assert termed.returncode == 0, termed.stderr[-3000:]
    assert "restored step 8" in termed.stderr
    assert 'SUMMARY {"status": "preempted", "step": 11}' in termed.stdout
    assert sorted(os.listdir(run / "checkpoints")) == ["11", "8"]
    again = drive(env, run, manifest, overrides)
    assert again.returncode == 0 and "restored step 11" in again.stderr, again.stderr[-3000:]
    assert 'SUMMARY {"status": "finished", "step": 16}' in again.stdout
    assert "| stream (val at step 16, teacher-forced) |" in again.stdout

    want, got = final_params(str(tmp_path / "straight")), final_params(str(run))
    assert want[0] == got[0] == 16
    assert_trees_equal(got[1], want[1])  # bitwise: same batches, same dropout keys, same CPU
    assert_trees_equal(got[2], want[2])
    losses = {r: dict(scalars(str(tmp_path / r / "tensorboard"))["train/loss"]) for r in ("straight", "interrupted")}
    assert losses["interrupted"][16] == losses["straight"][16]
    assert losses["interrupted"][4] == losses["straight"][4]


def test_the_results_table_says_which_step_and_split_its_metrics_come_from():
    from bertgen_jax.train import results_table
    base = {"status": "preempted", "step": 11, "workdir": "w", "compiles": {"train": 1}, "results": []}
    val = {"loss": 2.0, "accuracy": 0.5, "loss/mt_en-de": 2.0, "accuracy/mt_en-de": 0.5}
    train_only = results_table({**base, "eval": {}, "eval_step": None, "train": val})
    assert "| stream (train, last report) | loss | [MASK] accuracy |" in train_only
    stale = results_table({**base, "eval": val, "eval_step": 0, "train": {}})
    assert "| stream (val at step 0, teacher-forced) |" in stale and "| mt_en-de | 2.0000 | 0.500 |" in stale
    assert "| stream" not in results_table({**base, "eval": {}, "eval_step": None, "train": {}})


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(manifest, tmp_path):
    from bertgen_jax import train
    config = tiny_config(manifest, **{"optim.lr": 1e30, "optim.warmup_steps": 0, "optim.clip_norm": 0.0,
                                      "train.log_every": 1, "train.checkpoint_every": 1,
                                      "train.steps": 10, "eval.batches": 0})
    with pytest.raises(errors.TrainingDiverged, match=r"by step (\d+).*last good checkpoint is step") as err:
        train.run(config, str(tmp_path))
    bad = int(err.value.args[0].split("by step ")[1].split(":")[0])
    kept = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
    assert kept and max(kept) == bad - 1, (kept, bad)


def test_an_unknown_single_task_stream_is_one_error_line_not_a_traceback(manifest, env, tmp_path):
    out = subprocess.run([sys.executable, "-m", "bertgen_jax.main", "--config", "configs/single_task.py:mt_en-xx",
                          "--workdir", str(tmp_path / "run"), f"--config.data.manifest={manifest}"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]  # a config value: a usage error
    assert "error: data.train_streams names ['mt_en-xx'], not train streams of" in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr


def test_paper_config_lists_every_missing_file_and_where_to_get_it(tmp_path):
    data = tmp_path / "data"
    (data / "bert-base-multilingual-cased").mkdir(parents=True)
    (data / "bert-base-multilingual-cased" / "vocab.txt").write_text("[PAD]\n")  # one file present
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO, BERTGEN_DATA=str(data))
    workdir = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "bertgen_jax.main", "--config", "configs/multitask.py:paper",
                          "--workdir", str(workdir)], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 1, out.stderr[-2000:]
    listed = [line.strip() for line in out.stderr.splitlines() if line.startswith("  /")]
    mbert = data / "bert-base-multilingual-cased"
    assert listed == [str(mbert / "config.json"), f"{mbert / 'model.safetensors'} or {mbert / 'pytorch_model.bin'}",
                      str(data / "vl-bert" / "vl-bert_base_res101_pretrain_multitask.model"),
                      str(data / "vocab_bertgen.txt"), str(data / "manifest.json")]
    assert out.stderr.count("get it: ") == 5
    assert not workdir.exists()  # stopped before anything else


def test_training_a_subset_of_streams_still_evaluates_every_val_stream(manifest, tmp_path):
    """data.train_streams trains on two streams; the teacher-forced eval covers all val streams
    (their ids run past the train streams': this used to fail with an IndexError). A rerun
    asking for fewer steps than the workdir's checkpoint is refused."""
    from bertgen_jax import train
    config = tiny_config(manifest, **{"data.train_streams": ("mt_en-de", "ic_en"), "train.steps": 2,
                                      "train.log_every": 1, "train.checkpoint_every": 100,
                                      "eval.batches": 2})
    summary = train.run(config, str(tmp_path))
    trained = {k.split("/")[1] for k in summary["train"] if k.startswith("loss/")}
    evaluated = {k.split("/")[1] for k in summary["eval"] if k.startswith("loss/")}
    assert trained <= {"mt_en-de", "ic_en"}
    assert len(evaluated - trained) >= 3, evaluated  # val streams beyond the trained ones
    assert all(np.isfinite(summary["eval"][f"loss/{n}"]) for n in evaluated)
    from bertgen_jax.errors import ConfigError
    config.train.steps = 1  # fewer steps than the checkpoint this workdir now holds
    with pytest.raises(ConfigError, match="has a checkpoint at step 2, past train.steps=1"):
        train.run(config, str(tmp_path))


def test_a_url_workdir_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    from bertgen_jax import train
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="a URL; give a filesystem path"):
        train.run(tiny_config(str(tmp_path / "unused.json")), "gs://my-bucket/run1")
    assert os.listdir(tmp_path) == []  # no local 'gs:' folder


@pytest.mark.parametrize("key,value", [("data.on_bad_record", "skpi"), ("data.mode", "pakced"),
                                       ("model.dtype", "float16"), ("objective", "one-pass"), ("eval.beam", 0),
                                       ("eval.compare_beam", -1)])
def test_a_misspelt_choice_is_refused_before_anything_is_written(tmp_path, key, value):
    from bertgen_jax import train
    from bertgen_jax.errors import ConfigError
    with pytest.raises(ConfigError, match=rf"^{key}={value!r}: expected"):
        train.run(tiny_config(str(tmp_path / "unused.json"), **{key: value}), str(tmp_path / "run"))
    assert os.listdir(tmp_path) == []


def test_a_one_pass_run_decodes_with_the_cache_and_keeps_its_objective(manifest, tmp_path):
    """objective=one_pass end to end: the workdir records it, its evaluation decodes with the
    cached decoder (and equals the full-recompute decoder), generate picks it from the workdir;
    a rerun with the other objective, or decoding the model as unrolled, is one clear error
    before any work, and the refused rerun leaves every file of the workdir as it was."""
    from bertgen_jax import compiles, decode, train
    from bertgen_jax.decode import reference
    from bertgen_jax.errors import ConfigError
    from bertgen_jax.generate import Generator
    workdir = str(tmp_path / "run")
    config = tiny_config(manifest, **{"objective": "one_pass", "train.steps": 6, "train.checkpoint_every": 6,
                                      "eval.batches": 1, "eval.decode": True, "eval.max_sentences": 4})
    before = dict(compiles.COUNTS)
    summary = train.run(config, workdir)
    assert summary["status"] == "finished" and summary["compiles"]["train"] == 1
    assert any(k[0] == "cached_greedy" for k in compiles.since(before))
    assert not any(k[0] in ("greedy", "beam") for k in compiles.since(before))
    assert {r["name"] for r in summary["results"]} >= {"ic_en", "mt_en-de", "mmt_en-de"}
    with open(os.path.join(workdir, "model_config.json")) as f:
        assert json.load(f)["objective"] == "one_pass"

    files = {os.path.join(d, n) for d, _, names in os.walk(workdir) for n in names}
    content = {f: open(f, "rb").read() for f in files}
    config.objective = "unrolled"
    with pytest.raises(ConfigError, match=r"was trained with objective='one_pass', this config has objective='unrolled'"):
        train.run(config, workdir)
    assert {os.path.join(d, n) for d, _, names in os.walk(workdir) for n in names} == files
    assert all(open(f, "rb").read() == content[f] for f in files)

    gen = Generator.load(workdir)
    assert gen.model.cfg.objective == "one_pass"
    from bertgen_jax.data import datasets
    data = datasets.load(config.data, workdir, dict(config.data.budgets).__getitem__, splits=("test",))
    pairs = [p for s in data.splits["test"] if s.task == "mt" for p in s.pairs[:3]]
    got = decode.generate(gen.model, pairs, max_len=10)
    assert [list(x) for x in got] == [list(x) for x in reference.one_pass_greedy(gen.model, pairs, max_len=10)]
    with pytest.raises(ValueError, match="trained with objective='one_pass' and cannot be decoded as 'unrolled'"):
        decode.generate(gen.model, pairs, objective="unrolled")
