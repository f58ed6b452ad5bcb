"""The one-pass layout (data/one_pass.py): its tokens and positions, no leakage between a query
and what it must not see, and its loss equal to separate forward passes, one per query.

Tolerances: the same float32 model evaluates the same tokens; rows differ only in padding or in
tokens that the mask hides. A hidden token's score is replaced by float32's lowest value before
the softmax, whose exp is exactly 0, so its value cannot reach the output at all; what can move
is the summation order of shorter or longer (padded) reductions, a few ulps of O(1) numbers in
a 2-layer, 32-wide model: 1e-6 on logits and 1e-5 on a loss (the issue's bounds) leave a
margin of about 10x over that, while a visible token changed moves them by over 1e-4 (asserted below).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bertgen_jax import vocab
from bertgen_jax.data.one_pass import one_pass
from bertgen_jax.data.pipeline import regions_reader
from bertgen_jax.data.rows import RowSpec, assemble_row, stack_rows
from bertgen_jax.data.unroll import Pair, unroll
from bertgen_jax.layout import KIND_END, KIND_REGION, KIND_TEXT
from tests.test_decode import CFG, FEAT, STORE, random_model

PAIRS = [Pair("ic", "en", np.zeros(0, np.int32), np.array([30, 31, 32], np.int32), 0, len(STORE[0][0])),
         Pair("mmt", "de", np.array([40, 41, 42, 43], np.int32), np.array([50, 51], np.int32), 1, len(STORE[1][0])),
         Pair("mt", "fr", np.array([60, 61, 62], np.int32), np.array([70, 71, 72, 73], np.int32))]
SPEC = RowSpec(96, 16, 24, FEAT, attention_rank=True)
REGIONS = regions_reader(STORE)
PER_TOKEN = ("token_ids", "token_kind", "token_type", "positions", "region_index", "attention_rank")


def logits_at(model, batch):
    return np.asarray(jax.jit(lambda b: model(b, b["mask_positions"]))(
        {k: jnp.asarray(v) for k, v in batch.items()}))


def test_a_segment_is_context_content_queries_with_the_original_positions():
    pair = PAIRS[1]
    seg = one_pass(pair, budget=64)
    h, r, n = 3 + len(pair.src_ids), pair.num_regions, len(pair.tgt_ids)
    assert len(seg) == h + r + 1 + n + n + 1
    np.testing.assert_array_equal(seg.token_ids[:h], [vocab.lang_tag_id("de"), vocab.CLS_ID, 40, 41, 42, 43, vocab.SEP_ID])
    np.testing.assert_array_equal(seg.token_kind[h:h + r + 1], [KIND_REGION] * r + [KIND_END])
    np.testing.assert_array_equal(seg.token_ids[h + r + 1:], [50, 51] + [vocab.MASK_ID] * 3)
    np.testing.assert_array_equal(seg.labels, [50, 51, vocab.STOP_ID])
    # y_i and Q_i have the position y_i has in the original's layout (its unrolled examples).
    ex = unroll(pair, budget=64)
    original = [e.positions[e.mask_index] for e in ex]  # [MASK] of prefix t sits where y_(t+1) goes
    np.testing.assert_array_equal(seg.positions[seg.mask_indices], original)
    np.testing.assert_array_equal(seg.positions[h + r + 1:h + r + 1 + n], original[:n])
    # Regions and [END] where the original's first example (empty prefix) has them.
    np.testing.assert_array_equal(seg.positions[h:h + r + 1], ex[0].positions[h + 2:])
    assert (seg.token_type[seg.token_kind == KIND_TEXT] == 0).all() and (seg.token_type[h:h + r + 1] == 2).all()
    assert (seg.region_index[seg.token_kind == KIND_TEXT] == 0).all()  # the whole image on every text token
    # Ranks: C 0, y_j 2j, Q_i 2i - 1.
    np.testing.assert_array_equal(seg.attention_rank[h + r + 1:], [2, 4, 1, 3, 5])
    assert (seg.attention_rank[:h + r + 1] == 0).all()
    # Target length does not move the context: the same pair with another target has the same C.
    longer = one_pass(Pair(pair.task, "de", pair.src_ids, np.arange(80, 86, dtype=np.int32), 1, pair.num_regions), 64)
    np.testing.assert_array_equal(longer.positions[:h + r + 1], seg.positions[:h + r + 1])


@pytest.fixture(scope="module")
def packed():
    segments = [one_pass(p, budget=64) for p in PAIRS]
    row = assemble_row(segments, SPEC, REGIONS)
    return segments, stack_rows([row])


def test_no_query_sees_its_future_or_another_query(packed):
    """For every query Q_i of the three pairs packed in one row: change y_j for j >= i, every
    other query of the row, and every token of the other pairs; Q_i's logits do not move."""
    segments, batch = packed
    model = random_model()
    model.eval()  # dropout off
    rng = np.random.default_rng(0)
    starts = np.cumsum([0] + [len(s) for s in segments])
    rows, targets = [], []
    for s, seg in enumerate(segments):
        n, c = len(seg.labels) - 1, len(seg) - 2 * (len(seg.labels) - 1) - 1
        for i in range(1, n + 2):
            row = {k: v[0].copy() for k, v in batch.items()}
            ids = row["token_ids"]
            at = starts[s]
            future = at + c + np.arange(i - 1, n)  # y_i .. y_n
            others = at + seg.mask_indices[np.arange(n + 1) != i - 1]
            elsewhere = np.concatenate([np.arange(starts[o], starts[o + 1]) for o in range(len(segments)) if o != s])
            elsewhere = elsewhere[row["token_kind"][elsewhere] == KIND_TEXT]
            for where in (future, others, elsewhere):
                ids[where] = rng.integers(21, 100, len(where))
            rows.append(row)
            targets.append(int(np.sum([len(x.labels) for x in segments[:s]])) + i - 1)
    perturbed = logits_at(model, stack_rows(rows))  # [Q, P, V]
    clean = logits_at(model, batch)[0]  # [P, V]
    diff = [np.max(np.abs(perturbed[q, p] - clean[p])) for q, p in enumerate(targets)]
    assert len(diff) == 4 + 3 + 5 and max(diff) <= 1e-6, diff
    # The same perturbation does move what may see it: y_n's change reaches Q_(n+1) of pair 0.
    row = {k: v[0].copy() for k, v in batch.items()}
    row["token_ids"][len(segments[0]) - 2 * 3 - 1 + 2] += 1  # y_3 of the IC pair
    moved = np.max(np.abs(logits_at(model, stack_rows([row]))[0, 3] - clean[3]))
    assert moved > 1e-4  # 100x the bound: the check above could see a leak


def test_the_loss_is_the_mean_of_separate_passes_one_per_query(packed):
    """Each pair's one-pass loss = the mean, over i, of the loss of a forward pass holding only
    C, y_1..y_(i-1) and Q_i (same positions, types and ranks)."""
    segments, batch = packed
    model = random_model()
    model.eval()  # dropout off
    logp = jax.nn.log_softmax(logits_at(model, batch)[0], -1)
    ce = -logp[np.arange(SPEC.targets), batch["labels"][0]]
    slot = 0
    for seg in segments:
        n = len(seg.labels) - 1
        c = len(seg) - 2 * n - 1
        one = ce[slot:slot + n + 1].mean()
        rows = []
        for i in range(1, n + 2):
            keep = np.concatenate([np.arange(c), c + np.arange(i - 1), [seg.mask_indices[i - 1]]])
            alone = dataclasses.replace(seg, **{f: getattr(seg, f)[keep] for f in PER_TOKEN},
                                        mask_indices=np.array([len(keep) - 1], np.int32),
                                        labels=seg.labels[i - 1:i])
            rows.append(assemble_row([alone], SPEC, REGIONS))
        separate = stack_rows(rows)
        lg = logits_at(model, separate)[:, 0]
        each = optax.softmax_cross_entropy_with_integer_labels(lg, separate["labels"][:, 0])
        assert abs(float(np.mean(each)) - float(one)) <= 1e-5, (seg.labels, float(np.mean(each)), float(one))
        slot += n + 1
    assert slot == batch["label_weights"].sum() == 4 + 3 + 5


def test_the_pipeline_packs_whole_pairs_and_resumes():
    """One-pass batches: each pair whole in one row (its n+1 labels y_1..y_n [STOP] in order,
    each slot tagged with its stream), rows mostly filled (whole segments pack less tightly than
    unrolled examples: 0.88 against 0.96 real tokens here), and a restored state continues with
    identical batches; an unrolled iterator's state is refused."""
    import json
    from bertgen_jax.data.pipeline import BatchIterator
    from bertgen_jax.data.rows import real_token_fraction
    from tests.test_pipeline import BUDGETS, STORE as PSTORE, assert_same, three_streams
    spec = RowSpec(128, 48, 32, 8, attention_rank=True)
    make = lambda: BatchIterator(three_streams(), PSTORE, spec, 4, budget_for=BUDGETS, seed=3, window=4,
                                 objective="one_pass")
    it = make()
    batches = [next(it) for _ in range(6)]
    seen = 0
    for b in batches:
        for r in range(4):
            slots = np.flatnonzero(b["label_weights"][r])
            labels, streams = b["labels"][r, slots], b["stream_ids"][r, slots]
            ends = np.flatnonzero(labels == vocab.STOP_ID)
            for start, end in zip(np.concatenate([[0], ends[:-1] + 1]), ends):
                tgt = labels[start:end]  # make_pairs' ids: 1e6 * (stream + 1) + 100 * pair + k
                assert len(tgt) and (np.diff(tgt) == 1).all() and tgt[0] % 100 == 0, tgt
                assert (streams[start:end + 1] == tgt[0] // 1_000_000 - 1).all()
                seen += 1
            assert len(ends) == 0 or ends[-1] == len(labels) - 1  # no pair split across rows
    assert seen >= 6 * 4
    assert np.mean([real_token_fraction(b) for b in batches]) > 0.7
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(3)]
    fresh = make()
    fresh.set_state(state)
    for want in expected:
        assert_same(next(fresh), want)
    unrolled = BatchIterator(three_streams(), PSTORE, RowSpec(128, 48, 32, 8), 4, budget_for=BUDGETS, seed=3, window=4)
    with pytest.raises(ValueError, match="objective"):
        fresh.set_state(unrolled.get_state())
    with pytest.raises(ValueError, match="attention_rank"):
        BatchIterator(three_streams(), PSTORE, RowSpec(128, 48, 32, 8), 4, objective="one_pass")


def test_the_row_fit_check_counts_what_the_layouts_build():
    """first_misfit's arithmetic = the real lengths of unroll()'s longest example and one_pass()'s
    segment: a row of exactly that size fits, one token less does not."""
    from bertgen_jax.data.pipeline import Stream, first_misfit
    for pair in PAIRS:
        for objective, longest in (("unrolled", unroll(pair, 64)[-1]), ("one_pass", one_pass(pair, 64))):
            exact = RowSpec(len(longest), len(longest.labels), max(1, longest.num_regions), FEAT)
            assert first_misfit([Stream("s", [pair])], exact, {pair.task: 64}, objective) is None
            short = RowSpec(len(longest) - 1, len(longest.labels), max(1, longest.num_regions), FEAT)
            assert f"needs {len(longest)} tokens" in first_misfit([Stream("s", [pair])], short, {pair.task: 64}, objective)


def test_the_attention_mask_is_the_rule_written_out():
    """model.attention_allowed on a one-pass row = the rule written by role, not by rank: C sees
    C; y_j sees C and y_1..y_j; Q_i sees C, y_1..y_(i-1) and itself; padding sees nothing useful
    and is seen by nobody. And the decoders' uncached segment (reference.one_pass_example) is the
    training segment cut to C, y_<t, Q_t."""
    import jax.numpy as jnp
    from bertgen_jax.decode import engine, reference
    from bertgen_jax.model import attention_allowed
    for pair in PAIRS:
        seg = one_pass(pair, budget=64)
        n = len(seg.labels) - 1
        c = len(seg) - 2 * n - 1
        row = stack_rows([assemble_row([seg], SPEC, REGIONS)])
        got = np.asarray(attention_allowed({k: jnp.asarray(v) for k, v in row.items()}))[0, 0]
        role = [("C", 0)] * c + [("y", j) for j in range(1, n + 1)] + [("Q", i) for i in range(1, n + 2)]
        want = np.zeros((len(seg), len(seg)), bool)
        for q, (rq, iq) in enumerate(role):
            for k, (rk, ik) in enumerate(role):
                want[q, k] = (rk == "C" if rq == "C" else
                              rk == "C" or (rk == "y" and ik <= iq) if rq == "y" else
                              rk == "C" or (rk == "y" and ik < iq) or q == k)
        np.testing.assert_array_equal(got[:len(seg), :len(seg)], want, err_msg=pair.task)
        assert not got[:len(seg), len(seg):].any()  # nobody sees padding
        ctx = engine.contexts([pair], budget=64)[0]
        for t in range(n + 1):
            cut = reference.one_pass_example(ctx, pair.tgt_ids[:t])
            keep = np.concatenate([np.arange(c), c + np.arange(t), [seg.mask_indices[t]]])
            for f in PER_TOKEN:
                np.testing.assert_array_equal(getattr(cut, f), getattr(seg, f)[keep], err_msg=f"{f} t={t}")
