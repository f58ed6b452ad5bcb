"""The model on its own: embeddings layout, masks, gathered head, dtypes, base size."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bertgen_jax import layout, model as M

TINY = M.ModelConfig(vocab_size=120, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=48,
                     max_positions=64, feature_dim=16, box_frequencies=4)


def visual_batch(rng, b=2, l=12, r=3, image_for_text=True):
    """Rows of text tokens (the first 8) then r regions and [END], with random features."""
    kind = np.full((b, l), layout.KIND_PAD)
    kind[:, :8] = layout.KIND_TEXT
    kind[:, 8:8 + r] = layout.KIND_REGION
    kind[:, 8 + r] = layout.KIND_END
    region_index = np.full((b, l), -1)
    region_index[:, :8] = 0 if image_for_text else -1
    region_index[:, 8:8 + r] = np.arange(r)
    positions = np.where(kind == layout.KIND_TEXT, np.arange(l), 8)
    positions[:, 8 + r] = 9
    boxes = np.sort(rng.uniform(0, 400, size=(b, r, 2, 2)), axis=2).transpose(0, 1, 3, 2).reshape(b, r, 4)
    return {
        "token_ids": jnp.asarray(rng.integers(104, TINY.vocab_size, (b, l)), jnp.int32),
        "token_kind": jnp.asarray(kind, jnp.int32),
        "token_type": jnp.asarray(np.where(kind >= layout.KIND_REGION, 2, 0), jnp.int32),
        "positions": jnp.asarray(positions, jnp.int32),
        "region_index": jnp.asarray(region_index, jnp.int32),
        "region_features": jnp.asarray(rng.normal(size=(b, r, TINY.feature_dim)), jnp.float32),
        "region_boxes": jnp.asarray(boxes, jnp.float32),
        "region_image_wh": jnp.full((b, r, 2), 400.0, jnp.float32),
    }


def fresh(cfg=TINY, seed=0):
    m = M.BertGen(cfg, nnx.Rngs(seed))
    m.eval()
    return m


def test_box_geometry_layout():
    # Whole image of 200x100: centre (50, 50)%, size (100, 100)%; per coordinate sin then cos.
    code = np.asarray(M.box_geometry(jnp.array([[0.0, 0.0, 200.0, 100.0]]), jnp.array([[200.0, 100.0]]), 4))
    assert code.shape == (1, 32)
    freq = 1000.0 ** (np.arange(4) / 4)
    np.testing.assert_allclose(code[0, 0:4], np.sin(50 / freq), atol=1e-6)
    np.testing.assert_allclose(code[0, 4:8], np.cos(50 / freq), atol=1e-6)
    np.testing.assert_allclose(code[0, 16:20], np.sin(100 / freq), atol=1e-6)  # width
    np.testing.assert_allclose(code[0, 28:32], np.cos(100 / freq), atol=1e-6)  # height


def test_gathered_logits_equal_all_position_logits():
    m = fresh()
    batch = visual_batch(np.random.default_rng(0))
    hidden = m.encode(batch)
    every = m.mlm_logits(hidden)
    at = jnp.array([[3, 7], [0, 5]])
    picked = m.mlm_logits(hidden, at)
    assert picked.shape == (2, 2, TINY.vocab_size)
    np.testing.assert_allclose(picked, jnp.take_along_axis(every, at[..., None], axis=1), atol=1e-6)


def test_fresh_visual_gammas_switch_vision_off():
    rng = np.random.default_rng(1)
    with_image = visual_batch(rng, image_for_text=True)
    text_only = {k: v for k, v in with_image.items() if not k.startswith("region_")}
    text_only["region_index"] = jnp.full_like(with_image["region_index"], -1)
    # Only the 8 text tokens, so both batches hold the same text-only rows.
    for b in (with_image, text_only):
        b["token_kind"] = jnp.where(b["token_kind"] == layout.KIND_TEXT, layout.KIND_TEXT, layout.KIND_PAD)
    m = fresh()
    a, b = m.encode(with_image)[:, :8], m.encode(text_only)[:, :8]
    np.testing.assert_allclose(a, b, atol=1e-6)
    m.embeddings.visual_ln_text.scale[...] = jnp.ones(TINY.hidden_size)
    a, b = m.encode(with_image)[:, :8], m.encode(text_only)[:, :8]
    assert float(jnp.max(jnp.abs(a - b))) > 1e-2


def test_regions_move_with_their_features():
    # A region token's output depends on its own RoI (gammas on): permuting features permutes it.
    m = fresh()
    m.embeddings.visual_ln_object.scale[...] = jnp.ones(TINY.hidden_size)
    batch = visual_batch(np.random.default_rng(2), image_for_text=False)
    x = m.embeddings(batch)
    swapped = dict(batch)
    perm = jnp.array([1, 0, 2])
    for k in ("region_features", "region_boxes"):
        swapped[k] = batch[k][:, perm]
    y = m.embeddings(swapped)
    np.testing.assert_allclose(x[:, 8], y[:, 9], atol=1e-5)
    assert float(jnp.max(jnp.abs(x[:, 8] - y[:, 8]))) > 1e-3


def test_packed_segments_equal_separate_rows():
    rng = np.random.default_rng(3)
    m = fresh()
    ids = rng.integers(104, TINY.vocab_size, (2, 6))
    separate = M.text_batch(np.pad(ids, ((0, 0), (0, 6))), np.pad(np.ones((2, 6)), ((0, 0), (0, 6))))
    packed = M.text_batch(ids.reshape(1, 12), np.ones((1, 12)))
    packed["positions"] = jnp.tile(jnp.arange(6), 2)[None]
    packed["segment_ids"] = jnp.repeat(jnp.array([1, 2]), 6)[None]
    a = m.encode(separate)[:, :6].reshape(1, 12, -1)
    np.testing.assert_allclose(m.encode(packed), a, atol=1e-5)


def test_dropout_is_active_in_training_only():
    m = fresh()
    batch = visual_batch(np.random.default_rng(4))
    np.testing.assert_array_equal(m.encode(batch), m.encode(batch))
    m.train()
    assert float(jnp.max(jnp.abs(m.encode(batch) - m.encode(batch)))) > 1e-3


def test_bfloat16_compute_tracks_float32():
    batch = visual_batch(np.random.default_rng(5))
    ref = fresh()
    low = fresh(dataclasses.replace(TINY, dtype="bfloat16"))
    assert low.embeddings.word_embeddings.embedding.dtype == jnp.float32  # params stay f32
    hidden = low.encode(batch)
    assert hidden.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(hidden, np.float32), ref.encode(batch), atol=0.1)


def test_remat_gives_the_same_gradients():
    batch = visual_batch(np.random.default_rng(6))

    def grads(cfg):
        m = fresh(dataclasses.replace(cfg, dropout=0.0, attention_dropout=0.0))
        m.train()  # remat applies in training mode only
        loss = lambda mod: jnp.mean(mod(batch, jnp.zeros((2, 1), jnp.int32)) ** 2)
        return nnx.grad(loss)(m)

    g0, g1 = grads(TINY), grads(dataclasses.replace(TINY, remat=True))
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_a_remat_model_in_eval_mode_runs_inside_a_scan():
    # Evaluation and decoding call the model from inside lax.scan / while_loop; nnx.remat on a
    # module captured from outside that trace used to raise a TraceContextError.
    batch = visual_batch(np.random.default_rng(7))
    plain, remat = fresh(TINY), fresh(dataclasses.replace(TINY, remat=True))

    def scanned(m):
        return jax.lax.scan(lambda c, _: (c, m.encode(batch)), None, None, length=2)[1]

    np.testing.assert_allclose(scanned(remat), scanned(plain), atol=1e-6)


def test_every_parameter_has_logical_axes():
    for path, var in nnx.to_flat_state(nnx.state(fresh(), nnx.Param)):
        axes = var.get_metadata().get("out_sharding")
        assert axes is not None and len(axes) == var.ndim, path
        assert any(a is not None for a in axes), f"{path} has no named axis"


def test_mbert_sized_model_runs_and_has_the_documented_size(tmp_path):
    import json
    from bertgen_jax.weights import config_from_hf
    (tmp_path / "config.json").write_text(json.dumps({
        "vocab_size": 119547, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
        "intermediate_size": 3072, "max_position_embeddings": 512, "hidden_act": "gelu"}))
    cfg = config_from_hf(str(tmp_path))
    m = fresh(cfg)
    assert abs(M.count_params(m, exclude_word_embeddings=True) - 89.3e6) < 0.05e6
    batch = M.text_batch(np.full((1, 8), 200), np.ones((1, 8)))
    logits = nnx.jit(lambda mod, b: mod(b, jnp.array([[7]])))(m, batch)
    assert logits.shape == (1, 1, 119547) and bool(jnp.all(jnp.isfinite(logits)))
