"""export --format bertgen: the original's torch checkpoint, with exactly the original model's
keys, loaded back by our BERTGEN loader into the same parameters and the same logits."""

import dataclasses
import os

import numpy as np
import pytest
import torch
from flax import nnx

from bertgen_jax import checkpoint, export, weights
from bertgen_jax import model as M

CFG = M.ModelConfig(vocab_size=60, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=24,
                    max_positions=40, feature_dim=8, box_frequencies=2, dropout=0.0, attention_dropout=0.0)

# The state_dict keys of the original's BERTGENMultitaskTraining (precomputed features, MLM head
# only, no pooler) under DataParallel, for 2 layers, in its module order; written out by hand.
LAYER = [f"{part}.{leaf}" for part in ("attention.self.query", "attention.self.key", "attention.self.value",
                                        "attention.output.dense", "attention.output.LayerNorm",
                                        "intermediate.dense", "output.dense", "output.LayerNorm")
         for leaf in ("weight", "bias")]
EXPECTED_KEYS = [
    "module.image_feature_extractor.obj_downsample.1.weight",
    "module.image_feature_extractor.obj_downsample.1.bias",
    "module.object_linguistic_embeddings.weight",
    "module.object_mask_visual_embedding.weight",
    "module.aux_text_visual_embedding.weight",
    "module.vlbert.word_embeddings.weight",
    "module.vlbert.end_embedding.weight",
    "module.vlbert.position_embeddings.weight",
    "module.vlbert.token_type_embeddings.weight",
    "module.vlbert.embedding_LayerNorm.weight",
    "module.vlbert.embedding_LayerNorm.bias",
    "module.vlbert.visual_ln_text.weight",
    "module.vlbert.visual_ln_text.bias",
    "module.vlbert.visual_ln_object.weight",
    "module.vlbert.visual_ln_object.bias",
    *[f"module.vlbert.encoder.layer.0.{k}" for k in LAYER],
    *[f"module.vlbert.encoder.layer.1.{k}" for k in LAYER],
    "module.vlbert.mlm_head.predictions.bias",
    "module.vlbert.mlm_head.predictions.transform.dense.weight",
    "module.vlbert.mlm_head.predictions.transform.dense.bias",
    "module.vlbert.mlm_head.predictions.transform.LayerNorm.weight",
    "module.vlbert.mlm_head.predictions.transform.LayerNorm.bias",
    "module.vlbert.mlm_head.predictions.decoder.weight",
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny model with every parameter random (vision included), as an exported directory."""
    root = tmp_path_factory.mktemp("export")
    model = M.BertGen(CFG, nnx.Rngs(0))
    rng = np.random.default_rng(0)
    for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        var[...] = rng.standard_normal(var.shape).astype(np.float32) * 0.5
    (root / "vocab.txt").write_text("".join(f"w{i}\n" for i in range(CFG.vocab_size)))
    checkpoint.export_model(model, str(root / "vocab.txt"), str(root / "model"))
    model.eval()
    return root, model


def visual_batch(rng, rows=2):
    """Rows of 5 text tokens, 3 regions (whole image first) and [END], each as the layout says."""
    kind = np.array([1, 1, 1, 1, 1, 2, 2, 2, 3])
    xy = rng.uniform(0, 300, (rows, 3, 2))
    return {"token_ids": rng.integers(0, CFG.vocab_size, (rows, 9)).astype(np.int32) * (kind == 1),
            "token_kind": np.tile(kind, (rows, 1)).astype(np.int32),
            "token_type": np.tile(np.where(kind == 1, 0, 2), (rows, 1)).astype(np.int32),
            "positions": np.tile([0, 1, 2, 3, 4, 5, 5, 5, 6], (rows, 1)).astype(np.int32),
            "region_index": np.tile([0, 0, 0, 0, 0, 0, 1, 2, -1], (rows, 1)).astype(np.int32),
            "region_features": rng.standard_normal((rows, 3, CFG.feature_dim)).astype(np.float32),
            "region_boxes": np.concatenate([xy, xy + rng.uniform(20, 300, (rows, 3, 2))], -1).astype(np.float32),
            "region_image_wh": np.full((rows, 3, 2), [640, 480], np.float32)}


def test_bertgen_file_has_the_original_keys_and_loads_back_to_identical_logits(exported, tmp_path):
    root, model = exported
    out = tmp_path / "bertgen.model"
    assert export.main(["--model", str(root / "model"), "--format", "bertgen", str(out)]) == 0
    assert os.listdir(tmp_path) == ["bertgen.model"]  # no temporary file left

    saved = torch.load(out, map_location="cpu", weights_only=True)
    assert list(saved) == ["state_dict"]
    sd = saved["state_dict"]
    assert list(sd) == EXPECTED_KEYS == export.original_keys(2)
    assert all(t.dtype == torch.float32 for t in sd.values())
    h, v = CFG.hidden_size, CFG.vocab_size
    shapes = {"module.image_feature_extractor.obj_downsample.1.weight": (h, CFG.geometry_dim + CFG.feature_dim),
              "module.object_linguistic_embeddings.weight": (1, h), "module.vlbert.end_embedding.weight": (1, h),
              "module.object_mask_visual_embedding.weight": (1, CFG.feature_dim),
              "module.vlbert.token_type_embeddings.weight": (3, h),
              "module.vlbert.encoder.layer.1.intermediate.dense.weight": (CFG.intermediate_size, h),
              "module.vlbert.encoder.layer.1.output.dense.weight": (h, CFG.intermediate_size),
              "module.vlbert.mlm_head.predictions.decoder.weight": (v, h)}
    assert {k: tuple(sd[k].shape) for k in shapes} == shapes
    # Tied as the original ties it: one tensor under both names.
    words, decoder = sd["module.vlbert.word_embeddings.weight"], sd["module.vlbert.mlm_head.predictions.decoder.weight"]
    assert decoder.data_ptr() == words.data_ptr()
    np.testing.assert_array_equal(words.numpy(), np.asarray(model.embeddings.word_embeddings.embedding[...]))
    np.testing.assert_array_equal(sd["module.vlbert.encoder.layer.0.attention.self.query.weight"].numpy(),
                                  np.asarray(model.layers[0].attention.query.kernel[...]).T)

    loaded, cfg, report = weights.init_model(M.ModelConfig(num_heads=2, box_frequencies=2, dropout=0.0,
                                                           attention_dropout=0.0), "bertgen", bertgen_path=str(out))
    assert cfg == CFG
    assert report.missing == [] and report.unexpected == []
    assert sorted(report.ignored) == ["module.aux_text_visual_embedding.weight",
                                      "module.object_mask_visual_embedding.weight",
                                      "module.vlbert.mlm_head.predictions.decoder.weight"]
    ours = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    for path, var in nnx.to_flat_state(nnx.state(loaded, nnx.Param)):
        np.testing.assert_array_equal(np.asarray(var[...]), np.asarray(ours[path][...]), err_msg=str(path))
    loaded.eval()
    rng = np.random.default_rng(1)
    # Bit-identical parameters through the same computation: the logits are equal exactly.
    for batch in (visual_batch(rng), M.text_batch(rng.integers(1, v, (2, 7)), np.ones((2, 7), np.int32))):
        np.testing.assert_array_equal(np.asarray(loaded(batch)), np.asarray(model(batch)))


def test_hf_format_is_export_hf(exported, tmp_path):
    root, _ = exported
    assert export.main(["--model", str(root / "model"), "--format", "hf", str(tmp_path / "hf")]) == 0
    assert sorted(os.listdir(tmp_path / "hf")) == ["config.json", "model.safetensors", "vocab.txt"]


def test_bad_input_is_one_line_and_writes_nothing(exported, tmp_path, capsys):
    root, _ = exported
    assert export.main(["--model", str(tmp_path / "nowhere"), "--format", "bertgen", str(tmp_path / "x.model")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "nowhere" in err
    (tmp_path / "adir").mkdir()
    assert export.main(["--model", str(root / "model"), "--format", "bertgen", str(tmp_path / "adir")]) == 1
    assert capsys.readouterr().err == (f"error: {tmp_path / 'adir'} is a directory; --format bertgen writes one "
                                       f"file (e.g. {tmp_path / 'adir'}/bertgen.model)\n")
    with pytest.raises(SystemExit) as exit_:
        export.main(["--model", str(root / "model"), "--format", "onnx", str(tmp_path / "y")])
    assert exit_.value.code == 2
    assert sorted(os.listdir(tmp_path)) == ["adir"] and os.listdir(tmp_path / "adir") == []


def test_every_parameter_has_exactly_one_original_key():
    model = M.BertGen(dataclasses.replace(CFG, num_layers=3), nnx.Rngs(1))
    state = export.bertgen_state(model)
    assert list(state) == export.original_keys(3)
    assert state[export.TIED] is state[export.WORDS]
