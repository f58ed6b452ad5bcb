"""Rows: packed rows change nothing the model computes per example; regions shared and flipped."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bertgen_jax import model as M
from bertgen_jax.data.rows import RowSpec, assemble_row, plan_rows, real_token_fraction, stack_rows
from bertgen_jax.data.unroll import Pair, unroll
from bertgen_jax.objective import per_target_loss

FEAT = 16
CFG = M.ModelConfig(vocab_size=400, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=48,
                    max_positions=64, feature_dim=FEAT, box_frequencies=4)


def fake_store(n_images, rng):
    """image -> (boxes, features, wh), whole-image region first."""
    out = {}
    for i in range(n_images):
        n = int(rng.integers(3, 8))
        w, h = 640.0, 480.0
        xy = np.sort(rng.uniform(0, 400, (n, 2, 2)), axis=1)
        boxes = np.concatenate([xy[:, :, 0], xy[:, :, 1]], axis=1)[:, [0, 2, 1, 3]].astype(np.float32)
        feats = rng.normal(size=(n, FEAT)).astype(np.float32)
        out[i] = (np.vstack([[0, 0, w - 1, h - 1], boxes]).astype(np.float32),
                  np.vstack([feats.mean(0), feats]).astype(np.float32), np.array([w, h], np.float32))
    return out


def mixed_examples(rng, store):
    pairs = []
    for i in range(6):
        task = ("ic", "mmt", "mt")[i % 3]
        src = rng.integers(200, 400, 0 if task == "ic" else int(rng.integers(2, 6)))
        tgt = rng.integers(200, 400, int(rng.integers(1, 5)))
        image = -1 if task == "mt" else i % len(store)
        regions = 0 if task == "mt" else len(store[image][0])
        pairs.append(Pair(task, ("en", "de", "fr")[i % 3], src, tgt, image, regions))
    return [e for k, p in enumerate(pairs) for e in unroll(p, budget=30, flip=k % 2 == 1)]


def losses_per_example(model, examples, spec, mode, store):
    rows = plan_rows(examples, spec, mode)
    batch = stack_rows([assemble_row([examples[i] for i in r], spec, store.__getitem__) for r in rows])
    loss, _ = per_target_loss(model, {k: jnp.asarray(v) for k, v in batch.items()})
    out = np.full(len(examples), np.nan)
    for r, members in enumerate(rows):
        for slot, i in enumerate(members):
            out[i] = loss[r, slot]
    return out, batch, rows


def test_packed_rows_give_the_faithful_per_example_loss():
    rng = np.random.default_rng(0)
    store = fake_store(4, rng)
    examples = mixed_examples(rng, store)
    model = M.BertGen(CFG, nnx.Rngs(0))
    model.eval()
    for ln in (model.embeddings.visual_ln_text, model.embeddings.visual_ln_object):
        ln.scale[...] = jnp.ones(CFG.hidden_size)  # vision on, so a wrong region would show
    faithful, fb, frows = losses_per_example(model, examples, RowSpec(30, 1, 8, FEAT), "faithful", store)
    packed, pb, prows = losses_per_example(model, examples, RowSpec(96, 8, 24, FEAT), "packed", store)
    assert len(frows) == len(examples) and len(prows) < len(examples) / 2
    np.testing.assert_allclose(packed, faithful, atol=1e-5)
    assert real_token_fraction(pb) > real_token_fraction(fb)


def test_prefixes_of_one_pair_share_region_slots_and_flips_mirror_boxes():
    rng = np.random.default_rng(1)
    store = fake_store(1, rng)
    boxes, feats, wh = store[0]
    pair = Pair("ic", "en", np.array([], np.int32), np.array([300, 301, 302]), 0, len(boxes))
    examples = unroll(pair, budget=30, flip=True)
    spec = RowSpec(64, 8, len(boxes), FEAT)
    rows = plan_rows(examples, spec, "packed")
    assert rows == [[0, 1, 2, 3]]  # four prefixes, one copy of the image's regions
    row = assemble_row(examples, spec, store.__getitem__)
    np.testing.assert_array_equal(row["region_features"], feats)
    np.testing.assert_array_equal(row["region_boxes"][:, [0, 2]], (wh[0] - 1) - boxes[:, [2, 0]])
    np.testing.assert_array_equal(row["region_boxes"][:, [1, 3]], boxes[:, [1, 3]])
    np.testing.assert_array_equal(row["region_boxes"][0], boxes[0])  # the whole image mirrors onto itself
    assert row["labels"].tolist() == [300, 301, 302, 1, 0, 0, 0, 0]
    assert row["label_weights"].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]


def test_rows_refuse_what_does_not_fit():
    ex = unroll(Pair("mt", "en", np.arange(200, 220), np.array([300])), budget=64)
    with pytest.raises(ValueError, match="exceeds the row"):
        plan_rows(ex, RowSpec(16, 1, 0, FEAT), "faithful")
    with pytest.raises(ValueError, match="row mode 'dense'"):
        plan_rows(ex, RowSpec(64, 1, 0, FEAT), "dense")
