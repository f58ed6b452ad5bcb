"""checkpoint.py: the files of a workdir and of an export, read back exactly, with one-line errors."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from bertgen_jax import checkpoint
from bertgen_jax.errors import CheckpointError
from bertgen_jax.model import BertGen, ModelConfig

CFG = ModelConfig(vocab_size=64, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=24,
                  feature_dim=8, box_frequencies=2)


def pure_params(model):
    return jax.device_get(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def test_params_round_trip_and_merge_into_a_model(tmp_path):
    model = BertGen(CFG, nnx.Rngs(1))
    params = pure_params(model)
    checkpoint.write_params(str(tmp_path), params)
    back = checkpoint.read_params(str(tmp_path))
    assert sorted(back["layers"]) == [0, 1]  # layer indices are ints again, as nnx has them
    la, ta = jax.tree.flatten(params)
    lb, tb = jax.tree.flatten(back)
    assert ta == tb and all(np.array_equal(a, b) for a, b in zip(la, lb))

    # merge_params into a fresh model of another seed gives the first model's parameters.
    graphdef, abstract, rest = nnx.split(BertGen(CFG, nnx.Rngs(2)), nnx.Param, ...)
    merged = pure_params(checkpoint.merge_params(graphdef, abstract, back, rest))
    lm, tm = jax.tree.flatten(merged)
    assert tm == ta and all(np.array_equal(a, b) for a, b in zip(la, lm))


def test_model_config_round_trip_and_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    checkpoint.write_model_config("~", CFG)
    assert checkpoint.read_model_config(str(tmp_path)) == CFG
    with open(tmp_path / "model_config.json") as f:
        fields = json.load(f)
    (tmp_path / "model_config.json").write_text(json.dumps({**fields, "rotary": True}))
    with pytest.raises(CheckpointError) as err:  # the command line's one-line, exit-1 error
        checkpoint.read_model_config("~")
    assert str(err.value) == (f"{tmp_path}/model_config.json: unknown ModelConfig fields ['rotary']; was it "
                              "written by a newer bertgen_jax? Use that version to load it")
    (tmp_path / "model_config.json").write_text('{"hidden_size": 3')  # cut short
    with pytest.raises(CheckpointError, match=r"model_config.json: not a readable model config \(.*\); restore it"):
        checkpoint.read_model_config("~")
    with pytest.raises(FileNotFoundError) as err:
        checkpoint.vocab_file("~")
    assert str(err.value) == ("~: no vocab.txt; expected a training workdir or a directory written by "
                              "`python -m bertgen_jax.generate --export`")
