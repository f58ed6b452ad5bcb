"""generate.py: a workdir checkpoint or an exported directory back into the same model, and
the API and CLI giving exactly the decoder's outputs."""

import dataclasses
import os

import grain
import jax
import numpy as np
import pytest
from flax import nnx

from bertgen_jax import decode, generate
from bertgen_jax.checkpoint import Checkpoints, save_model_files
from bertgen_jax import toyworld
from bertgen_jax.data.prepare import prepare_annotations
from bertgen_jax.data.unroll import Pair
from bertgen_jax.metrics import ids_to_text
from bertgen_jax.model import BertGen, ModelConfig

CFG = ModelConfig(vocab_size=1400, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                  feature_dim=2048, visual_ln_init=1.0)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("toyworld")
    manifest = toyworld.generate(str(root), seed=0, scale="tiny", progress=False)
    files = sorted({str(root / s["file"]) for s in manifest["streams"] if s["format"] == "jsonl"})
    store = prepare_annotations(files, str(root / "store"), progress=False)
    model = BertGen(CFG, nnx.Rngs(3))
    return root, store, model, str(root / "vocab.txt")


def params_of(model):
    return jax.device_get(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def assert_same_params(a, b):
    la, ta = jax.tree.flatten(params_of(a))
    lb, tb = jax.tree.flatten(params_of(b))
    assert ta == tb and all(np.array_equal(x, y) for x, y in zip(la, lb))


def test_export_and_workdir_checkpoint_load_the_same_model(world, tmp_path):
    root, store, model, vocab_file = world
    gen = generate.Generator(model, vocab_file, store)
    gen.export(str(tmp_path / "exported"))
    assert_same_params(generate.Generator.load(str(tmp_path / "exported")).model, model)

    # A workdir as the trainer leaves it: its Checkpoints class (async save), model files beside.
    workdir = tmp_path / "workdir"
    os.makedirs(workdir)
    save_model_files(str(workdir), CFG, vocab_file)
    checkpoints = Checkpoints(str(workdir / "checkpoints"), every=1, keep=2, use_async=True)
    data = iter(grain.MapDataset.range(4).to_iter_dataset())
    checkpoints.save(7, params_of(model), {"count": np.zeros((), np.int32)}, data, force=True)
    checkpoints.close()
    loaded = generate.Generator.load(str(workdir))
    assert_same_params(loaded.model, model)
    with pytest.raises(FileNotFoundError, match="no checkpoint 3"):
        generate.Generator.load(str(workdir), step=3)
    with pytest.raises(FileNotFoundError, match="no model_config.json"):
        generate.Generator.load(str(tmp_path))


def save_workdir(workdir, vocab_file, params_by_step):
    """A workdir as the trainer leaves it, its Checkpoints opened on the path as given."""
    os.makedirs(os.path.expanduser(workdir), exist_ok=True)
    save_model_files(workdir, CFG, vocab_file)
    checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"), every=1, keep=3, use_async=True)
    for step, params in params_by_step.items():
        data = iter(grain.MapDataset.range(4).to_iter_dataset())
        checkpoints.save(step, params, {"count": np.zeros((), np.int32)}, data, force=True)
    checkpoints.close()


def test_relative_and_home_paths_and_chosen_steps(world, tmp_path, monkeypatch):
    root, store, model, vocab_file = world
    later = jax.tree.map(lambda x: x + 1.0, params_of(model))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    save_workdir("runs/x", vocab_file, {3: params_of(model), 7: later})  # relative, as typed
    assert sorted(int(s) for s in os.listdir(tmp_path / "runs/x/checkpoints")) == [3, 7]
    for path in ("runs/x", "~/runs/x", "./runs/../runs/x"):
        latest = params_of(generate.Generator.load(path).model)
        la, ta = jax.tree.flatten(latest)
        lb, tb = jax.tree.flatten(later)
        assert ta == tb and all(np.array_equal(a, b) for a, b in zip(la, lb))
    assert_same_params(generate.Generator.load("~/runs/x", step=3).model, model)
    # The CLI with relative paths on both sides, then the export read back through `~`.
    assert generate.main(["--model", "runs/x", "--step", "3", "--export", "exported"]) == 0
    assert sorted(os.listdir(tmp_path / "exported")) == ["model_config.json", "params.safetensors", "vocab.txt"]
    assert_same_params(generate.Generator.load("~/exported").model, model)
    with pytest.raises(ValueError, match="exported model .* drop --step"):
        generate.Generator.load("exported", step=3)


def test_export_that_does_not_match_its_config_is_a_one_line_error(world, tmp_path):
    root, store, model, vocab_file = world
    generate.Generator(model, vocab_file, store).export(str(tmp_path / "m"))
    save_model_files(str(tmp_path / "m"), dataclasses.replace(CFG, intermediate_size=48), vocab_file)
    with pytest.raises(ValueError, match=r"params\.safetensors: parameter layers/0/intermediate/bias is "
                       r"shape \(64,\) there but the model's model_config\.json gives shape \(48,\)") as err:
        generate.Generator.load(str(tmp_path / "m"))
    assert "\n" not in str(err.value)


def test_api_and_cli_give_the_decoders_outputs(world, tmp_path, capsys):
    root, store, model, vocab_file = world
    gen = generate.Generator(model, vocab_file, store)
    gen.export(str(tmp_path / "m"))
    images = list(store.ids[:3])
    pairs = [Pair("ic", "de", np.zeros(0, np.int32), np.zeros(0, np.int32), store.index(i),
                  store.num_boxes(store.index(i))) for i in images]
    want = [ids_to_text(gen.tokenizer, ids) for ids in decode.generate(model, pairs, store, max_len=12)]
    assert gen.caption(images, "de", max_len=12) == want

    sources = ["a red ball", "two small cubes"]
    mt = gen.translate(sources, "fr", max_len=12)
    src_ids = [np.asarray(gen.tokenizer.encode(s, add_special_tokens=False), np.int32) for s in sources]
    mt_pairs = [Pair("mt", "fr", s, np.zeros(0, np.int32)) for s in src_ids]
    assert mt == [ids_to_text(gen.tokenizer, i) for i in decode.generate(model, mt_pairs, max_len=12)]
    mmt = gen.translate(sources, "fr", images[:2], max_len=12)
    assert len(mmt) == 2

    (tmp_path / "src.txt").write_text("\n".join(sources) + "\n")
    assert generate.main(["--model", str(tmp_path / "m"), "--task", "translate", "--lang", "fr",
                          "--input", str(tmp_path / "src.txt"), "--max-len", "12"]) == 0
    assert capsys.readouterr().out.splitlines() == mt
    assert generate.main(["--model", str(tmp_path / "m"), "--task", "caption", "--lang", "de",
                          "--features", store.path, "--images", *images, "--max-len", "12",
                          "--output", str(tmp_path / "caps.txt")]) == 0
    assert (tmp_path / "caps.txt").read_text().splitlines() == want
    with pytest.raises(KeyError, match="not in the feature store"):
        gen.caption(["no-such-image"], "en")
    with pytest.raises(ValueError, match="2 sources but 1 image ids"):
        gen.translate(sources, "fr", images[:1])


def test_empty_and_bad_inputs_get_clear_answers(world, tmp_path, capsys):
    root, store, model, vocab_file = world
    gen = generate.Generator(model, vocab_file, store)
    assert gen.translate([], "de") == [] and gen.caption([], "de", beam=2) == []
    with pytest.raises(ValueError, match="source 2 of 3 is empty"):
        gen.translate(["a red ball", "  ", "two cubes"], "de")
    with pytest.raises(ValueError, match="beam=0"):
        gen.translate(["a red ball"], "de", beam=0)
    gen.export(str(tmp_path / "m"))
    cli = ["--model", str(tmp_path / "m"), "--task", "translate", "--lang", "de", "--max-len", "4"]
    (tmp_path / "src.txt").write_text("a red ball\n\ntwo cubes\n")
    assert generate.main(cli + ["--input", str(tmp_path / "src.txt")]) == 1
    assert capsys.readouterr().err == f"error: {tmp_path / 'src.txt'} line 2: empty source sentence (one source sentence per line, no blank lines)\n"
    (tmp_path / "one.txt").write_text("a red ball\n")
    assert generate.main(cli + ["--input", str(tmp_path / "one.txt"), "--features", store.path,
                                "--images", "no-such-image"]) == 1
    assert capsys.readouterr().err.startswith("error: image 'no-such-image' is not in the feature store")
    assert generate.main(["--model", str(tmp_path / "nothing-here"), "--task", "caption", "--lang", "de"]) == 1
    assert "no model_config.json" in capsys.readouterr().err


def test_cli_sampling_prints_n_lines_per_input_and_refuses_bad_options(world, tmp_path, capsys):
    root, store, model, vocab_file = world
    gen = generate.Generator(model, vocab_file, store)
    gen.export(str(tmp_path / "m"))
    sources = ["a red ball", "two small cubes"]
    (tmp_path / "src.txt").write_text("\n".join(sources) + "\n")
    want = gen.translate(sources, "fr", max_len=6, do_sample=True, top_k=50, seed=7, num_return_sequences=3)
    assert [len(w) for w in want] == [3, 3] and len(set(want[0])) > 1  # three different draws per input
    cli = ["--model", str(tmp_path / "m"), "--task", "translate", "--lang", "fr", "--input", str(tmp_path / "src.txt"),
           "--max-len", "6"]
    assert generate.main(cli + ["--do-sample", "--top-k", "50", "--seed", "7", "--num-return-sequences", "3"]) == 0
    assert capsys.readouterr().out.splitlines() == want[0] + want[1]  # input 1's three lines, then input 2's
    out = tmp_path / "out.txt"
    for bad, flag in [(["--do-sample", "--top-p", "1.5"], "--top-p"), (["--do-sample", "--top-p", "0"], "--top-p"),
                      (["--do-sample", "--temperature", "0"], "--temperature"), (["--do-sample", "--top-k", "0"], "--top-k"),
                      (["--do-sample", "--num-return-sequences", "0"], "--num-return-sequences"),
                      (["--temperature", "0.5"], "--temperature"), (["--do-sample", "--beam", "2"], "--do-sample")]:
        with pytest.raises(SystemExit) as exited:
            generate.main(cli + bad + ["--output", str(out)])
        errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
        assert exited.value.code == 2 and len(errors) == 1 and flag in errors[0], (bad, errors)
        assert not out.exists()
