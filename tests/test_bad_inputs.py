"""The mistakes a new user made on a fresh machine, each of which must end in one `error:` line
naming the flag, config key or file (and record and field) and what to do: exit code 2 for usage
(flags, config values), 1 for data, no traceback unless asked for, and a refused run leaves what
was there byte for byte as it was. Most cases call the function; a few run the command line to
check the exit code and that nothing else reaches stderr."""

import base64
import io
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from bertgen_jax import toyworld
from bertgen_jax.errors import ConfigError, DataError
from tests.conftest import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LANGS = "['cs', 'de', 'en', 'fr', 'tr']"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """ToyWorld tiny without a feature store: a refusal must come before one is built."""
    root = tmp_path_factory.mktemp("toyworld")
    toyworld.generate(str(root), seed=0, scale="tiny", progress=False)
    return root


def cli(module, *args, env=None):
    environ = {k: v for k, v in os.environ.items() if k != "BERTGEN_DEBUG"}  # one line unless asked
    environ.update(JAX_PLATFORMS="cpu", PYTHONPATH=REPO, **(env or {}))
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=environ,
                          capture_output=True, text=True, timeout=120)


def snapshot(root) -> dict:
    """Every file under root and its bytes."""
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def an_old_workdir(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text('{"from": "an earlier run"}\n')
    (workdir / "notes.txt").write_bytes(b"keep me\n")
    return workdir, snapshot(workdir)


def bad_manifest(world, name, **changes):
    """A copy of ToyWorld's manifest (beside it: same relative paths) with one stream changed."""
    with open(world / "manifest.json", encoding="utf-8") as f:
        manifest = json.load(f)
    [entry] = [e for e in manifest["streams"] if e["name"] == name and e["split"] == "train"]
    entry.update(changes)
    path = world / f"bad_{name}_{'_'.join(changes)}.json"
    path.write_text(json.dumps(manifest), encoding="utf-8")
    return path


# -- config keys and values -------------------------------------------------------------------

def test_a_misspelt_config_key_is_one_line_with_the_right_key_and_debug_shows_the_traceback(tmp_path):
    args = ["--config", "configs/multitask.py:tiny", "--workdir", tmp_path / "run", "--config.trian.steps=5"]
    out = cli("bertgen_jax.main", *args)
    assert out.returncode == 2
    assert out.stderr == ("error: --config.trian.steps=5: 'trian.steps' is not a config key (did you mean "
                          "'train.steps'?); configs/base.py lists every key\n")
    assert out.stdout == ""
    debug = cli("bertgen_jax.main", *args, "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "Did you mean" in debug.stderr
    assert os.listdir(tmp_path) == []


def test_a_bad_config_value_on_the_command_line_is_one_line_and_leaves_the_workdir_as_it_was(world, tmp_path):
    workdir, before = an_old_workdir(tmp_path)
    out = cli("bertgen_jax.main", "--config", "configs/multitask.py:tiny", "--workdir", workdir,
              f"--config.data.manifest={world / 'manifest.json'}", "--config.train.log_every=0")
    assert out.returncode == 2
    assert out.stderr == "error: train.log_every=0: expected an integer >= 1 (steps between reports)\n"
    assert snapshot(workdir) == before


@pytest.mark.parametrize("key,value,message", [
    ("train.log_every", 0, "train.log_every=0: expected an integer >= 1 (steps between reports)"),
    ("train.steps", -5, "train.steps=-5: expected an integer >= 1 (optimizer steps in all)"),
    ("train.checkpoint_every", 0, "train.checkpoint_every=0: expected an integer >= 1 (steps between checkpoints)"),
    ("train.keep_checkpoints", 0, "train.keep_checkpoints=0: expected an integer >= 1 (newest checkpoints kept)"),
    ("batch.rows_per_device", 0,
     "batch.rows_per_device=0: expected an integer >= 1 (rows per device per micro-batch)"),
    ("one_pass.rows_per_device", 0,
     "one_pass.rows_per_device=0: expected an integer >= 1 (one-pass rows per device per micro-batch)"),
    ("data.row_length", 0, "data.row_length=0: expected an integer >= 1 (tokens per row)"),
    ("eval.max_len.ic", 0, "eval.max_len.ic=0: expected an integer >= 1 (decode length limit)"),
    ("data.budgets.mt", -1, "data.budgets.mt=-1: expected an integer >= 1 (sequence budget)"),
    ("data.budgets.mt", 512, "data.budgets.mt=512: an MT example of that length puts [END] at position 512, "
                             "past model.max_positions=512; give at most 511"),
    ("optim.lr", 0.0, "optim.lr=0.0: expected a number > 0 (peak learning rate)"),
    ("model.num_heads", 5, "model.hidden_size=32: not a multiple of model.num_heads=5; change one so each "
                           "head gets a whole share of the width"),
    ("eval.decode_split", "tset",
     "eval.decode_split='tset': expected one of ('train', 'val', 'test') (did you mean 'test'?)"),
])
def test_a_value_that_cannot_work_is_refused_before_anything_is_read_or_written(world, tmp_path, key, value,
                                                                                message):
    from bertgen_jax import train
    workdir, before = an_old_workdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        train.run(tiny_config(world / "manifest.json", **{key: value}), str(workdir))
    assert str(err.value) == message
    assert snapshot(workdir) == before
    assert not (world / "features").exists()


@pytest.mark.parametrize("objective,keys", [("one_pass", "one_pass"), ("unrolled", "data")])
def test_a_row_too_small_for_the_data_is_a_config_error_before_anything_is_written(tmp_path, objective, keys):
    from bertgen_jax import train
    workdir, before = an_old_workdir(tmp_path)
    own = tmp_path / "toyworld"  # the data is read (and its store built) before rows are sized: not `world`
    toyworld.generate(str(own), seed=0, scale="tiny", progress=False)
    config = tiny_config(own / "manifest.json", **{"objective": objective, f"{keys}.row_length": 40})
    with pytest.raises(ConfigError, match=rf"^stream '\w+', pair \d+: needs \d+ tokens, .* in a row of 40 / .*: "
                                          rf"raise {keys}.row_length / {keys}.targets_per_row / "
                                          rf"{keys}.regions_per_row or lower data.budgets$"):
        train.run(config, str(workdir))
    assert snapshot(workdir) == before
    with pytest.raises(ConfigError, match="raise"):  # refused after the data was read: no folder left behind
        train.run(config, str(tmp_path / "fresh"))
    assert not (tmp_path / "fresh").exists()


# -- the manifest -----------------------------------------------------------------------------

@pytest.mark.parametrize("name,changes,field,problem", [
    ("ic_en", {"tgt": "eng"}, "tgt", f"unknown language 'eng' (use one of {LANGS}; did you mean 'en'?)"),
    ("mmt_en-de", {"src": "gr"}, "src", f"unknown language 'gr' (use one of {LANGS})"),
    ("mt_en-de", {"format": "txt"}, "format",
     "unknown format 'txt' (use one of ('jsonl', 'karpathy', 'text'); did you mean 'text'?)"),
])
def test_a_manifest_mistake_names_the_manifest_stream_and_field_before_features_are_built(
        world, tmp_path, name, changes, field, problem):
    from bertgen_jax import train
    path = bad_manifest(world, name, **changes)
    with pytest.raises(DataError) as err:
        train.run(tiny_config(path), str(tmp_path / "run"))
    assert str(err.value) == f"{path}, stream {name!r}, field {field!r}: {problem}"
    assert not (world / "features").exists()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("key,value", [("data.train_streams", ("mt_en-de", "mt_en-dee")),
                                       ("data.stream_weights", {"mt_en-dee": 2.0})])
def test_a_misspelt_stream_name_in_the_config_is_refused_with_the_closest_name(world, tmp_path, key, value):
    from bertgen_jax import train
    config = tiny_config(world / "manifest.json")
    config.data[key.split(".")[1]] = value
    with pytest.raises(ConfigError) as err:
        train.run(config, str(tmp_path / "run"))
    assert str(err.value).startswith(f"{key} names ['mt_en-dee'], not train streams of {world / 'manifest.json'} "
                                     "(it has ['ic_de', 'ic_en', ")
    assert str(err.value).endswith("]); did you mean 'mt_en-de'?")
    assert os.listdir(tmp_path) == [] and not (world / "features").exists()


def test_a_manifest_mistake_on_the_command_line_is_exit_code_1_and_one_line(world, tmp_path):
    path = bad_manifest(world, "ic_en", tgt="eng")
    out = cli("bertgen_jax.main", "--config", "configs/multitask.py:tiny", "--workdir", tmp_path / "run",
              f"--config.data.manifest={path}")
    assert out.returncode == 1
    assert "Traceback" not in out.stderr and "Event loop" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines[-1] == (f"error: {path}, stream 'ic_en', field 'tgt': unknown language 'eng' "
                         f"(use one of {LANGS}; did you mean 'en'?)")
    assert all(" INFO " in line for line in lines[:-1])  # the start-up log lines, nothing else
    assert os.listdir(tmp_path) == []


# -- feature files ----------------------------------------------------------------------------

def b64(array) -> str:
    return base64.b64encode(np.asarray(array, dtype="<f4").tobytes()).decode("ascii")


def member() -> dict:
    return {"image_w": 64, "image_h": 48, "num_boxes": 2, "boxes": b64(np.ones((2, 4))),
            "features": b64(np.arange(12).reshape(2, 6))}


def annotations(tmp_path, members: dict, compression=zipfile.ZIP_STORED):
    """train.jsonl naming each member of frcnn.zip, one line each."""
    with zipfile.ZipFile(tmp_path / "frcnn.zip", "w", compression) as z:
        for name, content in members.items():
            z.writestr(name, json.dumps(content))
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"image": f"{i}.jpg", "frcnn": f"frcnn.zip@/{name}"}) + "\n"
                            for i, name in enumerate(members)), encoding="utf-8")
    return path


def prepare_cli(capsys, *args):
    from bertgen_jax.data import prepare
    code = prepare.main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_a_corrupt_deflated_zip_member_names_the_zip_and_the_member(tmp_path, capsys):
    path = annotations(tmp_path, {"00000000.json": member(), "00000001.json": member()}, zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(tmp_path / "frcnn.zip") as z:
        info = z.getinfo("00000001.json")
    data = bytearray((tmp_path / "frcnn.zip").read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)  # after the local header
    data[start:start + info.compress_size] = b"\xff" * info.compress_size  # not a deflate stream
    (tmp_path / "frcnn.zip").write_bytes(bytes(data))
    before = snapshot(tmp_path)

    code, err = prepare_cli(capsys, "--annotations", path, "--out", tmp_path / "store")
    assert code == 1
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: {tmp_path / 'frcnn.zip'}, member 00000001.json (from train.jsonl line 2): "
                          "cannot be decompressed (Error -3 while decompressing data")
    assert err.endswith(") (the zip is damaged: re-create or re-download it)\n")
    assert snapshot(tmp_path) == before  # no store, no partial folder


def test_a_stray_character_in_base64_features_is_refused_naming_file_record_and_field(tmp_path, capsys):
    bad = member()
    bad["features"] = bad["features"][:8] + "!" + bad["features"][8:]  # a lenient decoder drops it
    path = annotations(tmp_path, {"00000000.json": bad})
    before = snapshot(tmp_path)
    code, err = prepare_cli(capsys, "--annotations", path, "--out", tmp_path / "store")
    assert code == 1
    assert err == (f"error: {tmp_path / 'frcnn.zip'}, member 00000000.json (from train.jsonl line 1), "
                   "field 'features': is not valid base64 (character '!' at offset 8) "
                   "(the feature file is damaged: re-create it)\n")
    assert snapshot(tmp_path) == before


def test_a_bad_prepare_flag_is_argparse_one_error_line(tmp_path, capsys):
    path = annotations(tmp_path, {"00000000.json": member()})
    with pytest.raises(SystemExit) as exit_:
        prepare_cli(capsys, "--annotations", path, "--out", tmp_path / "store", "--feature-dim", "0")
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.endswith("error: argument --feature-dim: expected an integer >= 1, got '0'")


# -- generate ---------------------------------------------------------------------------------

@pytest.mark.parametrize("flag,value", [("--batch-size", "0"), ("--max-len", "-1"), ("--beam", "0")])
def test_a_generate_flag_out_of_range_is_one_error_line_naming_it(tmp_path, capsys, flag, value):
    from bertgen_jax import generate
    with pytest.raises(SystemExit) as exit_:
        generate.main(["--model", str(tmp_path), "--task", "translate", "--lang", "de", flag, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].endswith(f"error: argument {flag}: expected an integer >= 1, got {value!r}")


def test_generate_with_empty_input_says_so_exits_1_and_writes_nothing(tmp_path, capsys, monkeypatch):
    from bertgen_jax import generate
    empty = tmp_path / "sources.txt"
    empty.write_text("")
    # The input is read before the model loads: the model path is never reached.
    args = ["--model", str(tmp_path / "no_model"), "--task", "translate", "--lang", "de"]
    assert generate.main(args + ["--input", str(empty), "--output", str(tmp_path / "out.txt")]) == 1
    assert capsys.readouterr().err == f"error: {empty}: no source sentence to read (one source sentence per line)\n"
    assert os.listdir(tmp_path) == ["sources.txt"]
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert generate.main(args) == 1
    captured = capsys.readouterr()
    assert captured.err == "error: stdin: no source sentence to read (one source sentence per line)\n"
    assert captured.out == ""


def test_a_rerun_with_other_sizes_is_refused_before_toyworld_is_generated_in_the_workdir(tmp_path):
    """Default data (ToyWorld generated into the workdir): a rerun over a workdir whose model has
    other sizes is refused before the corpus (100 MB at demo scale) is written there."""
    import dataclasses
    from bertgen_jax import checkpoint, train
    from bertgen_jax.model import ModelConfig
    workdir = tmp_path / "run"
    workdir.mkdir()
    checkpoint.write_model_config(str(workdir), dataclasses.replace(ModelConfig(), hidden_size=64, num_layers=2,
                                                                    num_heads=4, intermediate_size=64))
    before = snapshot(workdir)
    with pytest.raises(ConfigError, match=r"holds a model of other settings than this config's \(hidden_size 64 -> 32; "
                                          r"see its model_config.json\): use another --workdir"):
        train.run(tiny_config(""), str(workdir))
    assert snapshot(workdir) == before and sorted(os.listdir(workdir)) == ["model_config.json"]
