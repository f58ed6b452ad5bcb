"""Sampling (decode/sampling.py) in the greedy loops of unrolled (decode/greedy.py) and one-pass
(decode/cached.py) models: the filtering rules on hand-made distributions, the limits that are
greedy (temperature -> 0, top_k = 1) token for token, keys that follow the input (batch size,
refill and input order change nothing), the first token's empirical distribution against the
model's softmax, option errors, and one extra compile per bucket.

Token ids are compared exactly: the same keys and (up to float32 reassociation between buffer
lengths) the same logits draw the same token unless a Gumbel-perturbed arg-max ties to within a
few ulps, which these fixed seeds do not hit."""

import dataclasses

import jax
import numpy as np
import pytest

from bertgen_jax import compiles, decode, vocab
from bertgen_jax.decode import cached, engine, reference, sampling
from bertgen_jax.decode import greedy as G
from tests.test_decode import CFG, MAX_LEN, PAIRS, STORE, random_model

ONE_PASS = dataclasses.replace(CFG, objective="one_pass")
# Batch sizes no other test uses: tests/test_decode.py and test_cached.py count their own compiles
# (of 4, 8 and 16 rows) in the same process, and the counts below start from nothing.
BATCH, OTHER_BATCH = 6, 5


def kept(logits, temperature=1.0, top_k=0, top_p=1.0):
    filtered = jax.jit(sampling.filter_logits)(np.asarray([logits], np.float32), np.float32(temperature),
                                               np.int32(top_k), np.float32(top_p))
    return set(np.flatnonzero(np.isfinite(np.asarray(filtered[0]))).tolist())


def test_top_p_keeps_the_smallest_set_reaching_p_and_top_k_exactly_k():
    logits = np.log([0.5, 0.3, 0.15, 0.05])
    assert kept(logits, top_p=0.8) == {0, 1}  # 0.5 + 0.3 reaches 0.8 exactly
    assert kept(logits, top_p=0.81) == {0, 1, 2}
    assert kept(logits, top_p=0.5) == {0} and kept(logits, top_p=0.01) == {0}  # the best token always stays
    assert kept(logits, top_p=0.96) == {0, 1, 2, 3} and kept(logits, top_p=1.0) == {0, 1, 2, 3}
    assert kept(logits[::-1], top_p=0.8) == {3, 2}  # by probability, not by id
    for k in range(1, 5):
        assert kept(logits, top_k=k) == set(range(k))
    assert kept(logits, top_k=9) == {0, 1, 2, 3}
    # Exactly k among ties (the lower ids, as arg-max), and top_k = 0 keeps all.
    assert kept([1.0, 2.0, 2.0, 2.0, 0.0], top_k=2) == {1, 2} and len(kept(np.zeros(7), top_k=0)) == 7
    # top_p after top_k: [0.5, 0.3, 0.15] / 0.95 = [0.526, 0.316, 0.158]; 0.526 + 0.316 = 0.842.
    assert kept(logits, top_k=3, top_p=0.84) == {0, 1} and kept(logits, top_k=3, top_p=0.85) == {0, 1, 2}
    # The temperature sharpens before top_p: at 0.5 the masses are [0.69, 0.25, 0.06, 0.006].
    assert kept(logits, temperature=0.5, top_p=0.9) == {0, 1} and kept(logits, top_p=0.9) == {0, 1, 2}


@pytest.mark.parametrize("objective", ["unrolled", "one_pass"])
def test_near_zero_temperature_and_top_k_of_one_are_greedy_with_one_compile_per_bucket(objective):
    model = random_model(ONE_PASS if objective == "one_pass" else CFG, stop_bias=2.0)
    before = dict(compiles.COUNTS)
    greedy = decode.generate(model, PAIRS, STORE, max_len=MAX_LEN, batch_size=BATCH)
    buckets = {k[1:] for k in compiles.since(before) if k[0] in ("greedy", "cached_greedy")}
    lengths = {len(g) for g in greedy}
    assert len(lengths) >= 3  # rows stop at different steps: refills happen mid-batch
    before = dict(compiles.COUNTS)
    cold = decode.generate(model, PAIRS, STORE, max_len=MAX_LEN, batch_size=BATCH, do_sample=True,
                           temperature=1e-6, seed=5)
    name = "cached_sampled" if objective == "one_pass" else "greedy_sampled"
    # Sampling adds one compile per bucket greedy used (the same buckets: the same outputs).
    assert compiles.since(before) == {(name,) + b: 1 for b in buckets} and len(buckets) >= 1
    before = dict(compiles.COUNTS)
    top1 = decode.generate(model, PAIRS, STORE, max_len=MAX_LEN, batch_size=BATCH, do_sample=True,
                           temperature=1.7, top_k=1, top_p=0.3, seed=9)
    assert compiles.since(before) == {}  # other options and seed: traced, nothing compiles
    for i, (g, c, t) in enumerate(zip(greedy, cold, top1)):
        np.testing.assert_array_equal(c, g, err_msg=f"temperature 1e-6, pair {i}")
        np.testing.assert_array_equal(t, g, err_msg=f"top_k 1, pair {i}")


@pytest.mark.parametrize("objective", ["unrolled", "one_pass"])
def test_a_seed_fixes_the_draws_whatever_the_batch_size_and_input_order(objective):
    model = random_model(ONE_PASS if objective == "one_pass" else CFG, stop_bias=2.0)
    run = lambda pairs, batch_size, seed=3, n=3: decode.generate(
        model, pairs, STORE, max_len=MAX_LEN, batch_size=batch_size, do_sample=True, seed=seed,
        temperature=1.3, top_p=0.95, num_return_sequences=n)
    same = lambda a, b: len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    a = run(PAIRS, BATCH)
    assert len(a) == len(PAIRS) and all(len(s) == 3 for s in a)
    assert all(same(x, y) for x, y in zip(a, run(PAIRS, OTHER_BATCH)))  # other batches, another refill order
    # Reversed input: an input draws the same (inputs that occur twice swap their streams).
    heads = [tuple(c.head) + (c.image,) for c in engine.contexts(PAIRS)]
    for i, (x, y) in enumerate(zip(a, run(PAIRS[::-1], BATCH)[::-1])):
        assert same(x, y) or heads.count(heads[i]) > 1, i
    # An input repeated n times draws what one input with num_return_sequences=n draws.
    assert same(run([PAIRS[1]] * 3, BATCH, n=1), a[1])
    # The draws differ between the samples of an input, and between seeds.
    differ = lambda u, v: sum(not np.array_equal(x, y) for x, y in zip(u, v))
    assert differ([s[0] for s in a], [s[1] for s in a]) >= 10
    assert differ([s[0] for s in a], [s[0] for s in run(PAIRS, BATCH, seed=4)]) >= 10


def first_token_logprobs(model, pair, one_pass):
    """[V] float64 log p(first token | pair), computed the reference way (no cache, no buffers)."""
    if not one_pass:
        return reference.next_token_logprobs(model, [pair], [[]], STORE)[0].astype(np.float64)
    ctx = engine.contexts([pair])[0]
    graphdef, state = engine.eval_split(model)
    logits = reference._logits_at_query(graphdef, state, [reference.one_pass_example(ctx, [])],
                                        engine.cached_regions(STORE), CFG.feature_dim)[0].astype(np.float64)
    return logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()


def expected(logp, temperature, top_k, top_p):
    """The distribution sampling must draw from, written independently of filter_logits."""
    p = np.exp(logp / temperature - np.max(logp / temperature))
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    keep = order[:top_k] if top_k else order
    q = p[keep] / p[keep].sum()
    keep = keep[:int(np.searchsorted(np.cumsum(q), top_p - 1e-9)) + 1]  # first prefix reaching top_p
    out = np.zeros_like(p)
    out[keep] = p[keep] / p[keep].sum()
    return out


@pytest.mark.parametrize("objective", ["unrolled", "one_pass"])
def test_the_first_token_follows_the_models_softmax(objective):
    """n = 16000 draws of one input's first token (max_len 1: [STOP] is an empty output). With
    TV = 0.5 * sum |p_hat - p|: E|p_hat_i - p_i| <= sd = sqrt(p_i (1 - p_i) / n), so
    E[TV] <= B = 0.5 * sum sqrt(p_i (1 - p_i) / n); one draw moves TV by at most 1/n, so by
    McDiarmid P(TV > B + eps) <= exp(-2 n eps^2) = 1e-9 for eps = sqrt(ln(1e9) / (2 n)). The
    bound is then checked to be tight enough to catch a temperature 10 % off."""
    one_pass = objective == "one_pass"
    model = random_model(ONE_PASS if one_pass else CFG, spread=0.6)  # logits far from uniform
    pair, n = PAIRS[1], 16000
    logp = first_token_logprobs(model, pair, one_pass)
    for seed, (temperature, top_k, top_p) in enumerate([(1.0, None, 1.0), (0.7, 6, 0.9)]):
        draws = decode.generate(model, [pair], STORE, max_len=1, batch_size=2000, do_sample=True, seed=seed,
                                temperature=temperature, top_k=top_k, top_p=top_p, num_return_sequences=n)[0]
        first = np.array([d[0] if len(d) else vocab.STOP_ID for d in draws])
        p = expected(logp, temperature, top_k, top_p)
        p_hat = np.bincount(first, minlength=len(p)) / n
        tv = 0.5 * np.abs(p_hat - p).sum()
        bound = 0.5 * np.sqrt(p * (1 - p) / n).sum() + np.sqrt(np.log(1e9) / (2 * n))
        off = 0.5 * np.abs(expected(logp, temperature * 1.1, top_k, top_p) - p).sum()
        print(f"{objective} T={temperature} top_k={top_k} top_p={top_p}: TV {tv:.4f}, bound {bound:.4f}, "
              f"TV to T x 1.1 {off:.4f}, {np.count_nonzero(p)} tokens possible")
        assert tv <= bound and off > bound
        assert set(np.flatnonzero(p_hat)) <= set(np.flatnonzero(p))  # nothing filtered out is drawn


def test_bad_options_are_one_line_errors_naming_the_option():
    model = random_model()
    for options, name in [({"do_sample": True, "temperature": 0.0}, "temperature"),
                          ({"do_sample": True, "temperature": -1.0}, "temperature"),
                          ({"do_sample": True, "top_p": 0.0}, "top_p"), ({"do_sample": True, "top_p": 1.5}, "top_p"),
                          ({"do_sample": True, "top_k": 0}, "top_k"), ({"do_sample": True, "top_k": -1}, "top_k"),
                          ({"do_sample": True, "num_return_sequences": 0}, "num_return_sequences"),
                          ({"do_sample": True, "seed": -1}, "seed"),
                          ({"temperature": 0.5}, "temperature"),  # set but greedy would ignore it
                          ({"num_return_sequences": 2}, "num_return_sequences"),
                          ({"do_sample": True, "beam": 2}, "beam")]:
        with pytest.raises(ValueError, match=name) as err:
            decode.generate(model, PAIRS[:1], STORE, max_len=2, **options)
        assert "\n" not in str(err.value) and str(err.value).startswith(name), (options, str(err.value))


def test_the_decoders_take_the_sampler_directly():
    """greedy.py and cached.py called with a Sampler: the samples of a pair come out next to each
    other, as decode.generate groups them."""
    model = random_model(stop_bias=2.0)
    sampler = sampling.Sampler.make(seed=3, temperature=1.3, top_p=0.95)
    flat = G.greedy(model, PAIRS, STORE, max_len=MAX_LEN, batch_size=BATCH, sampler=sampler, samples=3)
    nested = decode.generate(model, PAIRS, STORE, max_len=MAX_LEN, batch_size=BATCH, do_sample=True, seed=3,
                             temperature=1.3, top_p=0.95, num_return_sequences=3)
    assert all(np.array_equal(f, s) for f, s in zip(flat, [s for per in nested for s in per]))
    one = cached.greedy(random_model(ONE_PASS, stop_bias=2.0), PAIRS[:2], STORE, max_len=MAX_LEN,
                        batch_size=BATCH, sampler=sampler, samples=2)
    assert len(one) == 4 and all(o.dtype == np.int32 and vocab.STOP_ID not in o for o in one)
