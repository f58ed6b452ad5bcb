"""The cached one-pass decoder (decode/cached.py) against decoding that recomputes the whole
one-pass segment every step (decode/reference.py one_pass_greedy / one_pass_beam): token for
token, greedy and beam, on random weights and on a model trained on ToyWorld with the one-pass
objective; one compile per batch shape.

Beam scores are sums of up to 20 float32 log-probabilities, computed by the cached and the full
pass in different reduction orders (two new tokens against a cache vs a whole row). A logit of
these 32/64-wide, 2-layer models is a chain of H-term dot products of O(10) partial sums, so
reassociation moves it by about sqrt(H) * u * 10 ~ 8 * 6e-8 * 10 ~ 5e-6 (u: float32 unit
roundoff); a log-softmax value moves by at most twice its logits' largest change, ~1e-5; 20 such
terms add as a random walk to ~5e-5. Bound 1e-4 (2x that; measured: 4e-6 on the random model).
A wrong cache changes a score by O(0.1) or more. Token ids must be equal exactly."""

import numpy as np
import pytest

from bertgen_jax import compiles
from bertgen_jax.decode import cached, reference
from tests.test_decode import MAX_LEN, PAIRS, STORE, TW_MAX_LEN, random_model, train_tiny


def test_cached_greedy_equals_full_recompute_on_a_random_model():
    # A [STOP] bias at which some rows stop at once, one half-way and some run to max_len.
    model = random_model(stop_bias=2.0)
    before = dict(compiles.COUNTS)
    # Batches of 4: tests/test_decode.py counts its own compiles of batches of 8 in this process.
    out = cached.greedy(model, PAIRS, STORE, max_len=MAX_LEN, batch_size=4)
    ref = reference.one_pass_greedy(model, PAIRS, STORE, max_len=MAX_LEN)
    for i, (a, b) in enumerate(zip(out, ref)):
        np.testing.assert_array_equal(a, b, err_msg=f"pair {i} ({PAIRS[i].task})")
    lengths = {len(o) for o in out}
    assert 0 in lengths and MAX_LEN in lengths and len(lengths) >= 3, lengths
    # Four batches of 4 rows of one shape: one projection and one decoder compile.
    assert compiles.since(before) == {
        ("project", 4, 8, 16): 1, ("cached_greedy", (4, 32), 32, 8, MAX_LEN): 1}
    before = dict(compiles.COUNTS)
    again = cached.greedy(model, PAIRS[::-1], STORE, max_len=MAX_LEN, batch_size=4)
    assert compiles.since(before) == {}
    for a, b in zip(again[::-1], out):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_tiny(str(tmp_path_factory.mktemp("toyworld_one_pass")), objective="one_pass")


def test_cached_greedy_equals_full_recompute_on_a_trained_model(trained):
    model, store, tok, seen, test = trained
    pairs = seen + test
    out = cached.greedy(model, pairs, store, max_len=TW_MAX_LEN, batch_size=16)
    ref = reference.one_pass_greedy(model, pairs, store, max_len=TW_MAX_LEN)
    for i, (a, b) in enumerate(zip(out, ref)):
        np.testing.assert_array_equal(a, b, err_msg=f"pair {i} ({pairs[i].task})")
    for p, o in zip(pairs, out):
        print(p.task, len(o), " ".join(tok.convert_ids_to_tokens(o.tolist()))[:100])
    # It learned its MT pairs by heart: a wrong cache or layout would not give them back.
    exact = [np.array_equal(o, p.tgt_ids) for o, p in zip(out, seen) if p.task == "mt"]
    assert sum(exact) >= 2
    assert sum(len(o) < TW_MAX_LEN for o in out) >= 6 and len({tuple(o) for o in out}) >= 8


def assert_same_beams(got, want, pairs):
    for i, ((a, sa), (b, sb)) in enumerate(zip(got, want)):
        np.testing.assert_array_equal(a, b, err_msg=f"pair {i} ({pairs[i].task})")
        assert abs(sa - sb) <= 1e-4, (i, sa, sb)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_cached_beam_equals_full_recompute_on_a_random_model(length_penalty):
    model = random_model(stop_bias=2.0)
    got = cached.beam_search(model, PAIRS, STORE, beam=3, max_len=MAX_LEN, batch_size=4, length_penalty=length_penalty)
    want = reference.one_pass_beam(model, PAIRS, STORE, beam=3, max_len=MAX_LEN, length_penalty=length_penalty)
    assert_same_beams(got, want, PAIRS)
    # Beam 1 is greedy.
    ones = cached.beam_search(model, PAIRS, STORE, beam=1, max_len=MAX_LEN, batch_size=4)
    for (ids, _), g in zip(ones, cached.greedy(model, PAIRS, STORE, max_len=MAX_LEN, batch_size=4)):
        np.testing.assert_array_equal(ids, g)


def test_cached_beam_equals_full_recompute_on_a_trained_model(trained):
    model, store, tok, seen, test = trained
    pairs = seen + test
    got = cached.beam_search(model, pairs, store, beam=4, max_len=TW_MAX_LEN, batch_size=16, length_penalty=0.0)
    want = reference.one_pass_beam(model, pairs, store, beam=4, max_len=TW_MAX_LEN, length_penalty=0.0)
    assert_same_beams(got, want, pairs)
    greedy = cached.greedy(model, pairs, store, max_len=TW_MAX_LEN, batch_size=16)
    assert sum(not np.array_equal(ids, g) for (ids, _), g in zip(got, greedy)) >= 1  # beam found other outputs


def test_a_model_is_decoded_only_as_it_was_trained():
    from bertgen_jax import decode
    model = random_model()  # unrolled (ModelConfig's default)
    with pytest.raises(ValueError, match=r"^this model was trained with objective='unrolled' and cannot be decoded "
                                         r"as 'one_pass': its model_config.json decides the decoder$"):
        decode.generate(model, PAIRS[:1], STORE, max_len=2, objective="one_pass")
    with pytest.raises(ValueError, match=r"^objective 'onepass' is not one of \('unrolled', 'one_pass'\)$"):
        decode.generate(model, PAIRS[:1], STORE, max_len=2, objective="onepass")
