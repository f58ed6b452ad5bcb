"""The PyTorch reference (benchmarks/torch_reference.py) computes what our JAX model computes,
decodes greedily exactly as a step-by-step hand loop does, trains; and the shared synthetic
workload (benchmarks/workload.py) follows its documented distributions."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from benchmarks import torch_reference as T
from benchmarks import workload as W
from bertgen_jax import model as M
from bertgen_jax import vocab
from bertgen_jax.data.rows import RowSpec, assemble_row, stack_rows
from bertgen_jax.data.unroll import unroll
from bertgen_jax.objective import mean_loss

FEAT = 16
CFG = M.ModelConfig(vocab_size=300, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=48,
                    feature_dim=FEAT, box_frequencies=4, visual_ln_init=1.0, dropout=0.0,
                    attention_dropout=0.0)
BUDGET = {"ic": 64, "mmt": 64, "mt": 512}


def random_jax_model(seed=0):
    """A BertGen with every parameter random (LayerNorm gammas near 1, so vision is on).
    Built abstractly and filled from numpy: every value is overwritten anyway, and eager
    initialisers would compile one XLA program per shape."""
    model = nnx.eval_shape(lambda: M.BertGen(CFG, nnx.Rngs(0)))
    rng = np.random.default_rng(seed)
    for path, var in nnx.to_flat_state(nnx.state(model)):
        v = var.get_value()
        if isinstance(var, nnx.Param):
            value = rng.normal(1.0 if path[-1] == "scale" else 0.0, 0.1, v.shape)
            var.set_value(jnp.asarray(value, jnp.float32))
        elif jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key):
            var.set_value(jax.random.key(seed))  # dropout's stream: unused in eval mode
        else:
            var.set_value(jnp.zeros(v.shape, v.dtype))
    model.eval()
    return model


@pytest.fixture(scope="module")
def models():
    jm = random_jax_model()
    tm = T.TorchBertGen(CFG)
    T.load_from_jax(tm, jm)
    return jm, tm.eval()


@pytest.fixture(scope="module")
def workload():
    return W.synthetic_pairs(6, seed=0, vocab_size=CFG.vocab_size, feature_dim=FEAT)


def examples_of(pairs):
    """First, middle and last prefix of each pair; every other pair flipped."""
    out = []
    for k, p in enumerate(pairs):
        u = unroll(p, BUDGET[p.task], flip=k % 2 == 1)
        out += [u[0], u[len(u) // 2], u[-1]]
    return out


def jax_batch(examples, regions_of):
    """Our faithful rows, one example each, padded to the longest."""
    spec = RowSpec(max(len(e) for e in examples), 1, max(e.num_regions for e in examples), FEAT)
    rows = stack_rows([assemble_row([e], spec, regions_of) for e in examples])
    return {k: jnp.asarray(v) for k, v in rows.items()}


def torch_logits_at_mask(tm, batch):
    with torch.no_grad():
        return tm(batch)[torch.arange(len(batch["labels"])), batch["mask_index"]].numpy()


def test_torch_reference_matches_jax_logits_on_ic_mmt_mt(models, workload):
    jm, tm = models
    pairs, regions_of = workload
    assert {p.task for p in pairs} == {"ic", "mmt", "mt"}
    examples = examples_of(pairs)
    assert any(e.flip for e in examples) and any(e.num_regions == 0 for e in examples)
    batch = jax_batch(examples, regions_of)
    ours = np.asarray(nnx.jit(lambda m, b: m(b, b["mask_positions"]))(jm, batch))[:, 0]
    theirs = torch_logits_at_mask(tm, T.original_batch(examples, regions_of, FEAT))
    assert ours.shape == theirs.shape == (len(examples), CFG.vocab_size)
    assert np.std(ours) > 0.3  # logits far from flat, so agreement means something
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-4)


def test_images_and_flips_change_the_torch_logits(models, workload):
    # Guards the parity test: with vision off or flips ignored it would not catch those paths.
    _, tm = models
    pairs, regions_of = workload
    ex = next(e for e in examples_of(pairs) if e.num_regions and e.flip)
    base = torch_logits_at_mask(tm, T.original_batch([ex], regions_of, FEAT))
    unflipped = torch_logits_at_mask(tm, T.original_batch([dataclasses.replace(ex, flip=False)], regions_of, FEAT))
    assert np.abs(base - unflipped).max() > 1e-3
    other = lambda image: tuple(a * 0.5 for a in regions_of(image))
    assert np.abs(base - torch_logits_at_mask(tm, T.original_batch([ex], other, FEAT))).max() > 1e-3


def test_load_from_jax_refuses_a_different_architecture(models):
    jm, _ = models
    with pytest.raises(ValueError, match="only in JAX .*layers.1"):
        T.load_from_jax(T.TorchBertGen(dataclasses.replace(CFG, num_layers=1)), jm)
    with pytest.raises(ValueError, match="JAX shape"):
        T.load_from_jax(T.TorchBertGen(dataclasses.replace(CFG, intermediate_size=40)), jm)


def test_train_step_loss_equals_ours_and_decreases(models, workload):
    jm, loaded = models
    pairs, regions_of = workload
    examples = examples_of(pairs)
    ours, _ = nnx.jit(mean_loss)(jm, jax_batch(examples, regions_of))
    tm = T.TorchBertGen(CFG)
    tm.load_state_dict(loaded.state_dict())
    opt = T.make_optimizer(tm, lr=1e-3)
    batch = T.original_batch(examples, regions_of, FEAT)
    losses = [float(T.train_step(tm, opt, batch)) for _ in range(4)]
    assert losses[0] == pytest.approx(float(ours), rel=1e-4, abs=1e-4)
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < losses[0] - 0.05
    # The decoder is tied: the optimizer holds the word table once, and it learns from both ends.
    assert sum(p is tm.embeddings.word_embeddings.weight for g in opt.param_groups for p in g["params"]) == 1


def hand_greedy(tm, pair, regions_of, max_len):
    """Independent check: for each step rebuild the single example from `unroll` (its last
    example is exactly prefix + [MASK]) and take the arg-max at [MASK]."""
    prefix = []
    for _ in range(max_len + 1):
        ex = unroll(dataclasses.replace(pair, tgt_ids=np.array(prefix, np.int32)), BUDGET[pair.task])[-1]
        token = int(torch_logits_at_mask(tm, T.original_batch([ex], regions_of, FEAT))[0].argmax())
        if token == vocab.STOP_ID or len(prefix) == max_len:
            break
        prefix.append(token)
    return prefix


def short_pairs(workload):
    """Pairs small enough that `unroll` with a prefix cuts nothing that decoding keeps."""
    pairs, regions_of = workload
    shrink = lambda p: dataclasses.replace(p, src_ids=p.src_ids[:6], num_regions=min(p.num_regions, 20))
    return [shrink(p) for p in pairs[:5]], regions_of


def test_greedy_original_equals_a_step_by_step_hand_loop(models, workload):
    _, loaded = models
    tm = T.TorchBertGen(CFG)
    tm.load_state_dict(loaded.state_dict())
    with torch.no_grad():  # make [STOP] likely enough that rows end at different steps
        tm.mlm_head.bias[vocab.STOP_ID] += STOP_BIAS
    tm.eval()
    pairs, regions_of = short_pairs(workload)
    shapes = []
    tm.register_forward_hook(lambda mod, args, out: shapes.append(tuple(out.shape)))
    got = T.greedy_original(tm, pairs, regions_of, max_len=MAX_LEN, batch_size=2)
    passes = list(shapes)
    assert got == [hand_greedy(tm, p, regions_of, MAX_LEN) for p in pairs]
    assert all(vocab.STOP_ID not in g and len(g) <= MAX_LEN for g in got)
    # Chunks [3, 6] (a finished row computed on), [6, 6] (max_len + 1 passes) and [1].
    assert [len(g) for g in got] == [3, 6, 6, 6, 1]
    assert [b for b, _, _ in passes] == [2] * 7 + [2] * 7 + [1] * 2
    widths = [l for _, l, _ in passes]  # each pass one token longer, whole vocabulary everywhere
    assert np.diff(widths[:7]).tolist() == [1] * 6 and {v for _, _, v in passes} == {CFG.vocab_size}


# [STOP]'s bias raised by this much makes the five short pairs stop after 3, -, -, - and 1 tokens.
STOP_BIAS, MAX_LEN = 1.85, 6


def test_decode_head_is_the_unrolled_layout(workload):
    pairs, regions_of = short_pairs(workload)
    prefix = np.array([200, 201, 202], np.int32)
    for p in pairs:
        head, regions = T.decode_head(p, BUDGET[p.task])
        ex = unroll(dataclasses.replace(p, tgt_ids=prefix), BUDGET[p.task])[-1]
        text = np.concatenate([head, prefix, [vocab.MASK_ID, vocab.SEP_ID]])
        np.testing.assert_array_equal(T.row_of(ex).text, text)
        assert regions == ex.num_regions and ex.mask_index == len(head) + len(prefix)


# ------------------------------------------------------------------------------ workload

def test_workload_follows_its_documented_distributions():
    pairs, regions_of = W.synthetic_pairs(1000, seed=3, vocab_size=8000)
    by_task = {t: [p for p in pairs if p.task == t] for t in ("ic", "mmt", "mt")}
    assert {t: len(v) for t, v in by_task.items()} == {"ic": 400, "mmt": 300, "mt": 300}
    for task, group in by_task.items():
        src = np.array([len(p.src_ids) for p in group])
        tgt = np.array([len(p.tgt_ids) for p in group])
        for lengths, (mean, sd, low, high) in ((src, W.SOURCE_LEN[task]), (tgt, W.TARGET_LEN[task])):
            assert low <= lengths.min() and lengths.max() <= high
            assert abs(lengths.mean() - mean) < 4 * sd / np.sqrt(len(group)) + 0.01
        assert {p.tgt_lang for p in group} == set(W.TARGET_LANGS[task])
        ids = np.concatenate([np.concatenate([p.src_ids, p.tgt_ids]) for p in group])
        assert ids.min() >= W.FIRST_WORD_ID and ids.max() < 8000
    regions = np.array([p.num_regions for p in by_task["ic"] + by_task["mmt"]])
    assert regions.min() >= 11 and regions.max() <= 101 and 50 < regions.mean() < 61
    assert all(p.image == -1 and p.num_regions == 0 for p in by_task["mt"])
    for p in by_task["mmt"][:20]:
        boxes, feats, wh = regions_of(p.image)
        assert boxes.shape == (p.num_regions, 4) and feats.shape == (p.num_regions, 2048)
        np.testing.assert_array_equal(boxes[0], [0, 0, wh[0] - 1, wh[1] - 1])
        np.testing.assert_allclose(feats[0], feats[1:].mean(0), rtol=1e-5, atol=1e-6)
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= wh[0] - 1).all() and (boxes[:, 3] <= wh[1] - 1).all()
        assert (boxes[1:, 2] - boxes[1:, 0] >= W.MIN_BOX - 1e-3).all() and (feats >= 0).all()
        assert 333 <= wh[0] <= 500 and 250 <= wh[1] <= 500
    # The budget of 64 bounds every visual example once unrolled.
    assert max(len(unroll(p, 64)[-1]) for p in by_task["ic"] + by_task["mmt"]) == 64


def test_workload_is_deterministic_per_seed():
    a, ra = W.synthetic_pairs(50, seed=7, vocab_size=1000, mix={"mmt": 1, "mt": 1})
    b, rb = W.synthetic_pairs(50, seed=7, vocab_size=1000, mix={"mmt": 1, "mt": 1})
    c, _ = W.synthetic_pairs(50, seed=8, vocab_size=1000, mix={"mmt": 1, "mt": 1})
    key = lambda ps: [(p.task, p.tgt_lang, p.src_ids.tolist(), p.tgt_ids.tolist(), p.image, p.num_regions) for p in ps]
    assert key(a) == key(b) and key(a) != key(c)
    image = next(p.image for p in a if p.image >= 0)
    for x, y in zip(ra(image), rb(image)):
        np.testing.assert_array_equal(x, y)
    assert W.task_counts(7, {"ic": 0.4, "mmt": 0.3, "mt": 0.3}) == {"ic": 3, "mmt": 2, "mt": 2}
    with pytest.raises(ValueError, match="unknown tasks"):
        W.synthetic_pairs(5, 0, 1000, mix={"asr": 1})


def test_model_sizes():
    base = W.size("base")
    assert (base.num_layers, base.hidden_size, base.num_heads, base.intermediate_size, base.vocab_size) == \
        (12, 768, 12, 3072, 119547)
    assert W.size("tiny", dtype="bfloat16").dtype == "bfloat16"
    assert sum(p.numel() for p in T.TorchBertGen(W.size("tiny")).parameters()) == \
        M.count_params(nnx.eval_shape(lambda: M.BertGen(W.size("tiny"), nnx.Rngs(0))))
