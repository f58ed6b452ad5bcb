"""Decoding: the jitted greedy and beam search against the original's loop (random and trained
models), the layout each step builds, compiles per bucket, exact beam search on a tiny
vocabulary, n-gram blocking."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from bertgen_jax import compiles
from bertgen_jax.decode import beam as B
from bertgen_jax.decode import engine as E
from bertgen_jax.decode import greedy as G
from bertgen_jax.decode import reference as R
from bertgen_jax import model as M
from bertgen_jax import vocab
from bertgen_jax.data.unroll import Pair, fit_budget, unroll

FEAT = 16
# 110 ids: the special tokens up to [MASK] = 103 exist, and a beam as wide as the vocabulary fits.
CFG = M.ModelConfig(vocab_size=110, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=48,
                     max_positions=64, feature_dim=FEAT, box_frequencies=4, visual_ln_init=1.0)
MAX_LEN = 12


def numpy_model(cfg, seed=0, spread=None, stop_bias=0.0):
    """BertGen initialised by numpy (on a small CPU every eager jax initialiser compiles for
    0.2 s): BERT's N(0, 0.02) weights, zero biases, unit LayerNorm gammas (visual ones at
    cfg.visual_ln_init); or, with spread, every parameter N(0, spread), which gives a random
    model logits far from uniform. stop_bias is added to the head's [STOP] bias."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: M.BertGen(cfg, nnx.Rngs(seed))))
    rng = np.random.default_rng(seed)

    def draw(path, x):
        name = "/".join(str(p.key) for p in path if hasattr(p, "key"))  # drops the trailing .value
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.key(seed)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            return np.zeros(x.shape, x.dtype)
        if spread is not None:
            value = rng.normal(0.0, spread, x.shape)
        elif name.endswith("scale"):
            value = np.full(x.shape, cfg.visual_ln_init if "visual_ln" in name else 1.0)
        elif name.endswith("bias"):
            value = np.zeros(x.shape)
        else:
            value = rng.normal(0.0, 0.02, x.shape)
        if name == "mlm_head/bias":
            value[vocab.STOP_ID] += stop_bias
        return jnp.asarray(value, jnp.float32)
    return nnx.merge(graphdef, jax.tree.map_with_path(draw, state))


def random_model(cfg=CFG, seed=1, spread=0.3, stop_bias=0.0):
    return numpy_model(cfg, seed, spread, stop_bias)


def toy_store(n_images, seed=0):
    """image -> (boxes, features, wh): 2-7 regions, whole image first."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n_images):
        n = int(rng.integers(1, 7))
        xy = np.sort(rng.uniform(0, 300, (n, 2, 2)), axis=1)
        boxes = np.stack([xy[:, 0, 0], xy[:, 0, 1], xy[:, 1, 0], xy[:, 1, 1]], 1)
        feats = rng.normal(size=(n, FEAT))
        out[i] = (np.vstack([[0, 0, 399, 299], boxes]).astype(np.float32),
                  np.vstack([feats.mean(0), feats]).astype(np.float32), np.array([400, 300], np.float32))
    return out


def toy_pairs(n, store, seed=0):
    """IC, MMT and MT in turn, sources of 2-12 ids; targets are the reference, never read."""
    rng = np.random.default_rng(seed)
    pairs = []
    for j in range(n):
        task = ("ic", "mmt", "mt")[j % 3]
        src = rng.integers(21, 100, 0 if task == "ic" else int(rng.integers(2, 13))).astype(np.int32)
        image = -1 if task == "mt" else int(rng.integers(len(store)))
        pairs.append(Pair(task, ("en", "de", "fr")[j % 3 - 1], src, np.array([30, 31], np.int32),
                          image, 0 if task == "mt" else len(store[image][0])))
    return pairs


STORE = toy_store(6)
PAIRS = toy_pairs(16, STORE)


@pytest.fixture(scope="module")
def rand():
    """The random model, its greedy outputs on PAIRS (two batches of 8 in one bucket), the
    traces that decoding added and how often the RoI projection was traced meanwhile.

    The [STOP] bias is bisected until about half the rows stop before MAX_LEN (a random
    model's [STOP] margin moves all rows at once): a dozen decodes, one compile."""
    model = random_model()
    bias, stop = np.array(model.mlm_head.bias[...]), np.eye(CFG.vocab_size, dtype=np.float32)[vocab.STOP_ID]
    project, calls, before = M.Embeddings.regions, [], dict(compiles.COUNTS)
    M.Embeddings.regions = lambda self, batch: calls.append(1) or project(self, batch)
    try:
        lo, hi = -30.0, 30.0
        for _ in range(12):
            mid = (lo + hi) / 2
            model.mlm_head.bias[...] = jnp.asarray(bias + mid * stop)
            out = G.greedy(model, PAIRS, STORE, max_len=MAX_LEN, batch_size=8)
            lo, hi = (mid, hi) if sum(len(o) == MAX_LEN for o in out) > len(out) // 2 else (lo, mid)
    finally:
        M.Embeddings.regions = project
    traced = {k: v - before.get(k, 0) for k, v in compiles.COUNTS.items() if v != before.get(k, 0)}
    return model, out, traced, len(calls)


def repeated_ngrams(ids, n):
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return len(grams) - len(set(grams))


def test_each_step_builds_the_training_layout():
    pairs = [PAIRS[0], PAIRS[1], PAIRS[2], PAIRS[4]]
    ctxs = E.contexts(pairs)
    prefixes = [[], [40, 41, 42], [7], [50, 51]]
    inp = E.host_inputs(ctxs, STORE.__getitem__, 6, FEAT)  # 2 dummy rows
    inp["projected"] = np.zeros(inp["region_features"].shape[:2] + (1,), np.float32)
    seq = np.zeros((6, MAX_LEN), np.int32)
    for r, p in enumerate(prefixes):
        seq[r, :len(p)] = p
    t = np.array([len(p) for p in prefixes] + [0, 0], np.int32)
    layout = jax.jit(E.layout, static_argnums=3)  # one compile, not one per eager op
    buffer = {k: np.asarray(v) for k, v in layout(inp, seq, t, 48).items()}
    fields = ("token_ids", "token_kind", "token_type", "positions", "region_index")
    for r, (pair, ctx, prefix) in enumerate(zip(pairs, ctxs, prefixes)):
        want = unroll(Pair(pair.task, pair.tgt_lang, pair.src_ids, np.array(prefix, np.int32),
                           pair.image, pair.num_regions), budget=1000)[-1]
        got = R.example(ctx, prefix)
        present = buffer["token_kind"][r] != M.KIND_PAD
        for f in fields:
            np.testing.assert_array_equal(getattr(got, f), getattr(want, f), err_msg=f)
            # The buffer holds the same tokens, in the same order once the padding is dropped.
            np.testing.assert_array_equal(buffer[f][r][present], getattr(want, f), err_msg=f)
        assert (got.mask_index, got.num_regions) == (want.mask_index, want.num_regions)
        # Tight: text, regions and [END] back to back from slot 0, padding only after them.
        assert present.sum() == len(want.token_ids) and present[:present.sum()].all()
    assert inp["valid"].tolist() == [True] * 4 + [False] * 2
    # A budget cuts source and regions as fit_budget does for a pair with an empty target.
    cut = E.contexts([PAIRS[1]], budget={"mmt": 12})[0]
    src, regions = fit_budget(Pair("mmt", "en", PAIRS[1].src_ids, np.zeros(0, np.int32), 0,
                                   PAIRS[1].num_regions), 12)
    assert (len(cut.head), cut.regions) == (len(src) + 3, regions) and len(src) + regions + 6 <= 12


def test_greedy_equals_the_reference_loop_on_a_random_model(rand):
    model, out = rand[:2]
    ref = R.reference_greedy(model, PAIRS, STORE, max_len=MAX_LEN, pad_to_multiple=32)
    for i, (a, b) in enumerate(zip(out, ref)):
        np.testing.assert_array_equal(a, b, err_msg=f"pair {i} ({PAIRS[i].task})")
    lengths = [len(o) for o in out]
    print("greedy lengths", lengths)
    # Rows of one batch stop at different steps, some at max_len.
    assert len(set(lengths)) >= 4 and MAX_LEN in lengths and min(lengths) < MAX_LEN
    assert len({tuple(o) for o in out}) >= 10
    assert all(o.dtype == np.int32 and vocab.STOP_ID not in o for o in out)


def test_one_compile_per_bucket_and_rois_projected_once(rand):
    model, out, traced, projections = rand
    # 16 pairs through 8 refilled rows of one shape (head width 32, 8 region slots), in buffers
    # of 16, 32 and 48 positions (BUFFER_BUCKET) as the unfinished rows need (head + regions +
    # [END] + t + 2): every shape traced once, over the dozen decodes of the fixture.
    assert traced == {("project", 8, 8, FEAT): 1, ("greedy", (8, 32), 16, 8): 1, ("greedy", (8, 32), 32, 8): 1,
                      ("greedy", (8, 32), 48, 8): 1}
    # Traced once, in the projection: the loop's steps reuse it.
    assert projections == 1
    before = dict(compiles.COUNTS)
    again = G.greedy(model, PAIRS[::-1], STORE, max_len=MAX_LEN, batch_size=8)
    assert dict(compiles.COUNTS) == before
    for a, b in zip(again[::-1], out):
        np.testing.assert_array_equal(a, b)
    # Decoding switched dropout (rate 0.1 here) off in a view: the model keeps its training mode.
    assert CFG.dropout > 0 and not model.layers[0].dropout.deterministic


def test_beam_of_one_is_greedy(rand):
    model, out = rand[:2]
    beams = B.beam_search(model, PAIRS, STORE, beam=1, max_len=MAX_LEN, batch_size=8)
    for i, ((ids, score), g) in enumerate(zip(beams, out)):
        np.testing.assert_array_equal(ids, g, err_msg=f"pair {i}")
    want = R.sequence_logprobs(model, PAIRS, out, STORE, max_len=MAX_LEN)
    np.testing.assert_allclose([score for _, score in beams], want, atol=1e-4)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_as_wide_as_the_vocabulary_finds_the_best_sequence(length_penalty):
    """Every hypothesis of max_len 2: [STOP]; y [STOP]; and y z, capped (no [STOP] term)."""
    model = random_model(seed=1, spread=0.5, stop_bias=3.0)
    pairs = PAIRS[:3]
    v, stop = CFG.vocab_size, vocab.STOP_ID
    beams = B.beam_search(model, pairs, STORE, beam=v, max_len=2, batch_size=8,
                          length_penalty=length_penalty)
    words = [y for y in range(v) if y != stop]
    lengths = set()
    for pair, (ids, score) in zip(pairs, beams):
        logp = R.next_token_logprobs(model, [pair] * v, [[]] + [[y] for y in words], STORE)  # [V, V]
        hyps = [((), logp[0, stop], 1)]
        for row, y in enumerate(words, start=1):
            hyps.append(((y,), logp[0, y] + logp[row, stop], 2))
            hyps += [((y, z), logp[0, y] + logp[row, z], 2) for z in words]
        best = max(hyps, key=lambda h: h[1] / h[2] ** length_penalty)
        assert len(hyps) == 1 + (v - 1) + (v - 1) ** 2
        assert tuple(ids.tolist()) == best[0] and score == pytest.approx(best[1], abs=1e-4)
        lengths.add(len(ids))
    print(f"length_penalty {length_penalty}: best lengths {sorted(lengths)}")


def test_no_repeat_ngram_blocks_repeats(rand):
    model, out = rand[:2]
    assert sum(repeated_ngrams(o.tolist(), 2) for o in out) > 10  # the model loves repeating
    blocked = B.beam_search(model, PAIRS, STORE, beam=2, max_len=MAX_LEN, batch_size=8, no_repeat_ngram=2)
    assert all(repeated_ngrams(ids.tolist(), 2) == 0 for ids, _ in blocked)
    assert np.mean([len(ids) for ids, _ in blocked]) > 3
    # The mask itself: prefix 5 6 5 bans 6 after 5 (n=2), nothing for n=3, both tokens for n=1.
    seq = jnp.array([[[5, 6, 5, 0, 0]]], jnp.int32)
    block = jax.jit(B._block_repeats, static_argnums=3)
    for n, banned in ((1, {5, 6}), (2, {6}), (3, set())):
        logp = np.asarray(block(jnp.zeros((1, 1, 10)), seq, 3, n))[0, 0]
        assert set(np.flatnonzero(np.isinf(logp))) == banned


# -- a model trained on ToyWorld -------------------------------------------------------------

TW_FEAT = 24
TW_BUDGETS = {"ic": 96, "mmt": 96, "mt": 96}
STREAMS = ("ic_en", "mmt_de-en", "mt_en-de", "mt_en-fr")
TW_MAX_LEN = 20  # short: few buffer lengths, so few compiles per decoder


def train_tiny(root: str, objective: str = "unrolled", steps: int = 250):
    """A tiny model trained `steps` steps on two ToyWorld pairs of each of four streams (IC,
    MMT, 2 MT) with `objective`; (model, store, tokenizer, those pairs, two test pairs per stream)."""
    from bertgen_jax import toyworld
    from bertgen_jax.data.pipeline import BatchIterator, Stream
    from bertgen_jax.data.prepare import prepare_annotations
    from bertgen_jax.data.rows import RowSpec
    from bertgen_jax.data.streams import stream_pairs
    from bertgen_jax.objective import mean_loss

    manifest = toyworld.generate(root, seed=0, scale="tiny", feature_dim=TW_FEAT)
    files = sorted({os.path.join(root, s["file"]) for s in manifest["streams"] if s["format"] == "jsonl"})
    store = prepare_annotations(files, os.path.join(root, "store"), progress=False)
    tok = vocab.load_tokenizer(os.path.join(root, manifest["vocab"]))
    pairs = {(s["name"], s["split"]): stream_pairs(s, root, tok, store, TW_BUDGETS[s["task"]])
             for s in manifest["streams"] if s["name"] in STREAMS}
    train = [Stream(name, ps[:2]) for (name, split), ps in pairs.items() if split == "train"]
    test = [p for name in STREAMS for p in pairs[name, "test"][:2]]
    # visual_ln 0.1, not 1: a unit-variance image term would drown the 0.02-scale word embeddings.
    cfg = M.ModelConfig(vocab_size=manifest["vocab_size"], hidden_size=64, num_layers=2, num_heads=4,
                        intermediate_size=128, max_positions=160, feature_dim=TW_FEAT, box_frequencies=4,
                        visual_ln_init=0.1, dropout=0.0, attention_dropout=0.0, objective=objective)
    model = numpy_model(cfg)
    # A functional step: nnx.jit's per-call graph traversal would cost more than the step.
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(optax.linear_schedule(0.0, 2e-3, 30))

    @jax.jit
    def step(params, opt_state, batch):
        loss_of = lambda p: mean_loss(nnx.merge(graphdef, p, rest), batch)[0]
        loss, grads = jax.value_and_grad(loss_of)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    one_pass = objective == "one_pass"
    spec = RowSpec(128, 48 if one_pass else 24, 24, TW_FEAT, attention_rank=one_pass)
    batches = BatchIterator(train, store, spec, 8, budget_for=TW_BUDGETS, seed=0, objective=objective)
    opt_state, losses = jax.jit(tx.init)(params), []
    for _ in range(steps):
        params, opt_state, loss = step(params, opt_state, next(batches))
        losses.append(loss)
    nnx.update(model, params)
    losses = np.asarray(losses)
    print(f"trained ({objective}): loss {np.mean(losses[:10]):.2f} -> {np.mean(losses[-10:]):.2f}")
    return model, store, tok, [p for s in train for p in s.pairs], test


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained 250 steps on two ToyWorld pairs of each of four streams (IC, MMT,
    2 MT), those pairs, two test pairs per stream and its greedy outputs on all of them."""
    model, store, tok, seen, test = train_tiny(str(tmp_path_factory.mktemp("toyworld_decode")))
    out = G.greedy(model, seen + test, store, max_len=TW_MAX_LEN, batch_size=16)
    return model, store, tok, seen, test, out


def test_greedy_equals_the_reference_loop_on_a_trained_model(trained):
    model, store, tok, seen, test, out = trained
    pairs = seen + test
    ref = R.reference_greedy(model, pairs, store, max_len=TW_MAX_LEN, pad_to_multiple=32)
    for i, (a, b) in enumerate(zip(out, ref)):
        np.testing.assert_array_equal(a, b, err_msg=f"pair {i} ({pairs[i].task})")
    for p, o in zip(pairs, out):
        print(p.task, len(o), " ".join(tok.convert_ids_to_tokens(o.tolist()))[:100])
    # It learned its MT pairs by heart: a decoder that built a wrong layout would not give them back.
    exact = [np.array_equal(o, p.tgt_ids) for o, p in zip(out, seen) if p.task == "mt"]
    assert sum(exact) >= 2
    lengths = [len(o) for o in out]
    # Captions of one image are one input, hence at most 14 different outputs.
    assert len({tuple(o) for o in out}) >= 12 and len(set(lengths)) >= 6
    assert sum(n < TW_MAX_LEN for n in lengths) >= 6  # the MT rows choose to stop


def test_beam_scores_at_least_greedy_on_a_trained_model(trained):
    model, store, tok, seen, test, out = trained
    pairs, max_len = seen + test, TW_MAX_LEN
    beams = B.beam_search(model, pairs, store, beam=4, max_len=max_len, batch_size=16, length_penalty=0.0)
    beam_scores = np.array([s for _, s in beams])
    scores = R.sequence_logprobs(model, pairs * 2, out + [ids for ids, _ in beams], store, max_len=max_len)
    greedy_scores = scores[:len(pairs)]
    np.testing.assert_allclose(beam_scores, scores[len(pairs):], atol=1e-3)  # what beam reports
    print(f"mean logprob: beam 4 {beam_scores.mean():.3f}, greedy {greedy_scores.mean():.3f}")
    assert beam_scores.mean() > greedy_scores.mean() + 0.1
    assert np.mean(beam_scores >= greedy_scores - 1e-4) >= 0.9
