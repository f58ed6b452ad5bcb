"""The original's decoding, as the reference our decoders must match, and teacher-forced scoring;
also a one-pass model's greedy decoding without a cache, the reference of decode/cached.py.

`reference_greedy` is the original's plain loop: the training layout of one unrolled example
rebuilt and padded every step, the head at every position, finished rows still computed.
`next_token_logprobs` / `sequence_logprobs` score given outputs the same way, one example per
token (teacher forcing). Tests compare decode/greedy.py and decode/beam.py with these, and
benchmarks/decode_speed.py times our decoder against `reference_greedy`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bertgen_jax import vocab
from bertgen_jax.data.one_pass import Segment, segment
from bertgen_jax.data.rows import RowSpec, assemble_row, stack_rows
from bertgen_jax.data.unroll import Example
from bertgen_jax.decode import engine
from bertgen_jax.decode.beam import initial_state, select
from bertgen_jax.layout import BATCH_KEYS, KIND_END, KIND_REGION, KIND_TEXT, TYPE_TEXT, TYPE_VISUAL


def example(ctx: engine.Context, prefix) -> Example:
    """The unrolled training example whose `[MASK]` follows `prefix` (== unroll(...)[-1])."""
    text = np.concatenate([ctx.head, np.asarray(prefix, np.int32), [vocab.MASK_ID, vocab.SEP_ID]]).astype(np.int32)
    n, r = len(text), ctx.regions
    kind = np.concatenate([np.full(n, KIND_TEXT), np.full(r, KIND_REGION), [KIND_END]]).astype(np.int32)
    region_index = np.concatenate([np.full(n, 0 if r else -1), np.arange(r), [-1]]).astype(np.int32)
    positions = np.concatenate([np.arange(n), np.full(r, n), [n + 1]]).astype(np.int32)
    return Example(np.concatenate([text, np.zeros(r + 1, np.int32)]), kind,
                   np.where(kind == KIND_TEXT, TYPE_TEXT, TYPE_VISUAL).astype(np.int32), positions,
                   region_index, mask_index=n - 2, label=-1, image=ctx.image, num_regions=r, flip=False)


def padded_batch(examples, regions_of, feature_dim, multiple=1) -> dict:
    """Rows padded to the longest example, as the original; multiple > 1 also rounds tokens to a
    multiple of it and regions to engine.MIN_REGION_SLOTS (masked pads: same numbers, fewer shapes)."""
    regions = max(e.num_regions for e in examples)
    spec = RowSpec(engine.round_up(max(len(e) for e in examples), multiple), 1,
                   engine.round_up(max(1, regions), engine.MIN_REGION_SLOTS if multiple > 1 else 1), feature_dim)
    batch = stack_rows([assemble_row([e], spec, regions_of) for e in examples])
    keep = lambda k: regions or multiple > 1 or not k.startswith("region_") or k == "region_index"
    keys = [k for k in BATCH_KEYS if k in batch and keep(k)]
    return {k: batch[k] for k in keys + ["mask_positions"]}


@functools.partial(jax.jit, static_argnums=0)
def _argmax_everywhere(graphdef, state, batch):
    # The head at EVERY position, as the original; the argmax on the device keeps the copy small.
    logits = nnx.merge(graphdef, state)({k: v for k, v in batch.items() if k != "mask_positions"})
    return jnp.argmax(logits, -1)  # [B, L]


@functools.partial(jax.jit, static_argnums=0)
def _logprobs_at_mask(graphdef, state, batch):
    logits = nnx.merge(graphdef, state)({k: v for k, v in batch.items() if k != "mask_positions"},
                                        batch["mask_positions"])
    return jax.nn.log_softmax(logits[:, 0], -1)  # [B, V]



def reference_greedy(model, pairs, regions=None, *, max_len=150, batch_size=8, budget=None,
                     pad_to_multiple=1) -> list[np.ndarray]:
    """The original's greedy loop: `batch_size` sentences at a time, the tight layout rebuilt
    and padded to the longest row every step, the head at every position, finished rows still
    computed, up to max_len + 1 passes (outputs cut to max_len). Each shape is compiled once
    (eager JAX is far slower than the original's eager PyTorch); pad_to_multiple > 1 pads the
    shapes (see padded_batch) so that tests compile a few times instead of once per step."""
    ctxs = engine.contexts(pairs, budget)
    engine.check_positions(model, ctxs, max_len + 1)  # its last pass follows max_len tokens
    regions_of, (graphdef, state) = engine.cached_regions(regions), engine.eval_split(model)
    out = []
    for start in range(0, len(ctxs), batch_size):
        chunk = ctxs[start:start + batch_size]
        prefixes, stopped = [[] for _ in chunk], [False] * len(chunk)
        for _ in range(max_len + 1):
            if all(stopped):
                break
            examples = [example(c, p) for c, p in zip(chunk, prefixes)]
            batch = padded_batch(examples, regions_of, model.cfg.feature_dim, pad_to_multiple)
            best = np.asarray(_argmax_everywhere(graphdef, state, batch))
            for r, e in enumerate(examples):
                if not stopped[r]:
                    tok = int(best[r, e.mask_index])
                    stopped[r] = tok == vocab.STOP_ID
                    prefixes[r] += [] if stopped[r] else [tok]
        out += [np.asarray(p[:max_len], np.int32) for p in prefixes]
    return out


def next_token_logprobs(model, pairs, prefixes, regions=None, *, budget=None) -> np.ndarray:
    """[P, V] float32 log-probabilities of the token after prefixes[i] given pairs[i]'s context
    (teacher forcing); shapes are bucketed so that any number of calls compiles a few times."""
    ctxs = engine.contexts(pairs, budget)
    examples = [example(c, p) for c, p in zip(ctxs, prefixes)]
    rows = engine.round_up(len(examples), 64)
    batch = padded_batch(examples + examples[-1:] * (rows - len(examples)), engine.cached_regions(regions),
                         model.cfg.feature_dim, multiple=engine.LENGTH_BUCKET)
    return np.asarray(_logprobs_at_mask(*engine.eval_split(model), batch))[:len(examples)]


def sequence_logprobs(model, pairs, ids, regions=None, *, max_len=None, budget=None) -> np.ndarray:
    """[N] sum of log p(y_t | y<t) over ids[i] given pairs[i], plus log p([STOP] | ids[i]) unless
    max_len capped it: the score beam.beam_search reports."""
    items = [(p, np.asarray(y, np.int32)) for p, y in zip(pairs, ids)]
    labels = [list(y) + ([] if max_len is not None and len(y) >= max_len else [vocab.STOP_ID]) for _, y in items]
    flat = [(p, y[:t], label[t]) for (p, y), label in zip(items, labels) for t in range(len(label))]
    logp = next_token_logprobs(model, [p for p, _, _ in flat], [y for _, y, _ in flat], regions, budget=budget)
    picked = logp[np.arange(len(flat)), [label for _, _, label in flat]]
    return np.array([s.sum() for s in np.split(picked, np.cumsum([len(lb) for lb in labels])[:-1])], np.float32)


# -- one-pass models: greedy recomputing everything each step ----------------------------------

def one_pass_example(ctx: engine.Context, prefix) -> Segment:
    """The one-pass segment of ctx with content `prefix` and only its last query Q_(t+1)
    (data/one_pass.py's layout and ranks): what a one-pass model predicts the next token from."""
    full = segment(ctx.head, ctx.regions, ctx.image, prefix)
    t, c = len(prefix), len(ctx.head) + ctx.regions + 1
    keep = np.concatenate([np.arange(c + t), full.mask_indices[t:]])  # drop the queries Q_1..Q_t
    per_token = ("token_ids", "token_kind", "token_type", "positions", "region_index", "attention_rank")
    return dataclasses.replace(full, **{f: getattr(full, f)[keep] for f in per_token},
                               mask_indices=np.array([len(keep) - 1], np.int32), labels=full.labels[t:])


def one_pass_greedy(model, pairs, regions=None, *, max_len=150, budget=None) -> list[np.ndarray]:
    """Greedy ids of a one-pass model with no cache: each step runs the whole segment of every
    unfinished pair (one_pass_example), padded to buckets of 32 tokens and rows; what
    decode/cached.py must equal token for token."""
    ctxs = engine.contexts(pairs, budget)
    engine.check_positions(model, ctxs, max_len, beyond=max(-1, 3 - max_len))
    regions_of, (graphdef, state) = engine.cached_regions(regions), engine.eval_split(model)
    prefixes, live = [[] for _ in ctxs], list(range(len(ctxs)))
    for _ in range(max_len):
        if not live:
            break
        examples = [one_pass_example(ctxs[i], prefixes[i]) for i in live]
        best = np.argmax(_logits_at_query(graphdef, state, examples, regions_of, model.cfg.feature_dim), -1)
        for i, tok in zip(list(live), best):
            if tok == vocab.STOP_ID:
                live.remove(i)
            else:
                prefixes[i].append(int(tok))
                if len(prefixes[i]) == max_len:
                    live.remove(i)
    return [np.asarray(p, np.int32) for p in prefixes]


def one_pass_beam(model, pairs, regions=None, *, beam=4, max_len=150, length_penalty=1.0, no_repeat_ngram=0,
                  budget=None) -> list[tuple[np.ndarray, float]]:
    """Beam search of a one-pass model with no cache: every step runs the whole segment of each
    live hypothesis (one_pass_example) and hands its logits to decode/beam.py's `select`; what
    decode/cached.py's beam search must equal."""
    ctxs = engine.contexts(pairs, budget)
    engine.check_positions(model, ctxs, max_len, beyond=max(-1, 3 - max_len))
    regions_of, (graphdef, state) = engine.cached_regions(regions), engine.eval_split(model)
    n = len(ctxs)
    loop = initial_state(n, beam, max_len, np.ones(n, bool))
    pick = jax.jit(select, static_argnums=(2, 4))
    while not np.asarray(loop.done).all():
        seq, s = np.asarray(loop.seq), int(loop.s)
        examples = [one_pass_example(ctxs[b], seq[b, k, :s]) for b in range(n) for k in range(beam)]
        logits = _logits_at_query(graphdef, state, examples, regions_of, model.cfg.feature_dim)
        loop = pick(loop, logits, beam, np.float32(length_penalty), int(no_repeat_ngram))[0]
    seq, lengths, logp = (np.asarray(x) for x in (loop.fin_seq, loop.fin_len, loop.fin_logp))
    return [(seq[b, :lengths[b]].copy(), float(logp[b])) for b in range(n)]


def _logits_at_query(graphdef, state, examples, regions_of, feature_dim):
    """[N, V] logits at each one-pass example's query, rows and tokens padded to buckets of 32."""
    spec = RowSpec(engine.round_up(max(map(len, examples)), engine.LENGTH_BUCKET), 1,
                   engine.round_up(max(1, max(e.num_regions for e in examples)), engine.MIN_REGION_SLOTS),
                   feature_dim, attention_rank=True)
    rows = engine.round_up(len(examples), 32)
    batch = stack_rows([assemble_row([e], spec, regions_of) for e in examples + examples[-1:] * (rows - len(examples))])
    return np.asarray(_query_logits(graphdef, state, batch))[:len(examples)]


@functools.partial(jax.jit, static_argnums=0)
def _query_logits(graphdef, state, batch):
    logits = nnx.merge(graphdef, state)({k: batch[k] for k in BATCH_KEYS if k in batch}, batch["mask_positions"])
    return logits[:, 0]
