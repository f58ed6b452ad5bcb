"""Decoding a one-pass model (objective "one_pass", data/one_pass.py) with a key/value cache.

Under the one-pass attention rule a content token y_j sees only the context C and y_1..y_j,
and the query Q_t sees C, y_<t and itself; nothing ever attends to a later token. So the keys
and values of C (every layer) are computed once per batch, those of y_j once, when it is
generated, and each step runs just two new tokens, y_(t-1) and Q_t, against the cache:
exactly the numbers of a full forward pass over C, y_1..y_(t-1), Q_t. Positions are those of
one_pass: C's text 0..h-1, regions h + 2, `[END]` h + 3, y_j and Q_j h + j - 1.

Shapes are fixed per batch (context buffer, max_len cache slots), so a batch size, context
bucket and max_len compile once; every row takes the same step t (rows that finished keep
computing until all have, or max_len). Beam search runs B sentences x K beams as B * K rows
and reorders the cache by each new hypothesis's parent (decode/beam.py `select` chooses).
Sampling runs the greedy loop with decode/sampling.py's draw in place of the arg-max.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from bertgen_jax import compiles, vocab
from bertgen_jax.decode import engine
from bertgen_jax.decode.beam import initial_state, select
from bertgen_jax.decode.sampling import Sampler, streams
from bertgen_jax.layout import KIND_END, KIND_PAD, KIND_REGION, KIND_TEXT, TYPE_TEXT, TYPE_VISUAL


def context_layout(inp, lc):
    """Model batch [N, lc] of the contexts alone: head, regions (position h + 2), [END] (h + 3)."""
    head, h, nr = inp["head"], inp["h"][:, None], inp["n_regions"][:, None]
    j = jnp.arange(lc)[None]
    slot = j - h
    text, region, end = j < h, (slot >= 0) & (slot < nr), slot == nr
    kind = jnp.where(text, KIND_TEXT, jnp.where(region, KIND_REGION, jnp.where(end, KIND_END, KIND_PAD)))
    ids = jnp.take_along_axis(head, jnp.clip(j, 0, head.shape[1] - 1), 1)
    return {"token_ids": jnp.where(text, ids, 0), "token_kind": kind,
            "token_type": jnp.where(kind >= KIND_REGION, TYPE_VISUAL, TYPE_TEXT),
            "positions": jnp.where(text, j, jnp.where(region, h + 2, jnp.where(end, h + 3, 0))),
            "region_index": jnp.where(text, jnp.where(nr > 0, 0, -1), jnp.where(region, slot, -1))}


def fill(model, inp, lc):
    """(keys, values) [layers, N, lc, heads, d] of every context token, and C's presence [N, lc]."""
    batch = context_layout(inp, lc)
    present = batch["token_kind"] != KIND_PAD
    allowed = (present[:, None, :] & present[:, :, None])[:, None]
    x = model.embeddings(batch, inp["projected"])
    ks, vs = [], []
    for layer in model.layers:
        k, v = layer.attention.keys_values(x)
        ks.append(k)
        vs.append(v)
        x = layer(x, allowed)
    return jnp.stack(ks), jnp.stack(vs), present


def step_logits(model, inp, context, cache, prev, t):
    """Logits [N, V] of Q_(t+1) and the cache with y_t's keys and values written at slot t - 1.

    context: fill()'s (keys, values, presence); cache: (keys, values) of y_1..y_max_len
    [layers, N, max_len, heads, d], slots >= t - 1 unused yet; prev [N]: y_t (ignored when
    t == 0); t: traced scalar, the prefix length of every row."""
    ck, cv, c_present = context
    n, m = prev.shape[0], cache[0].shape[2]
    h = inp["h"]
    image = jnp.where(inp["n_regions"] > 0, 0, -1)
    new = {"token_ids": jnp.stack([prev, jnp.full_like(prev, vocab.MASK_ID)], 1),
           "token_kind": jnp.full((n, 2), KIND_TEXT, jnp.int32), "token_type": jnp.full((n, 2), TYPE_TEXT, jnp.int32),
           "positions": jnp.stack([h + t - 1, h + t], 1).clip(0), "region_index": jnp.stack([image, image], 1)}
    x = model.embeddings(new, inp["projected"])
    has_prev = t > 0
    slots = jnp.arange(m)[None, :] < t - 1  # y_1..y_(t-1)
    # Keys: context, cached y slots, then the two new tokens (y_t, Q_(t+1)).
    sees_y = jnp.broadcast_to(slots, (n, m))
    row_y = jnp.concatenate([c_present, sees_y, jnp.full((n, 1), True), jnp.full((n, 1), False)], 1)
    row_q = jnp.concatenate([c_present, sees_y, jnp.full((n, 1), has_prev), jnp.full((n, 1), True)], 1)
    allowed = jnp.stack([row_y, row_q], 1)[:, None]  # [N, 1, 2, lc + m + 2]
    keys, values = cache
    at = jnp.maximum(t - 1, 0)
    for i, layer in enumerate(model.layers):
        k, v = layer.attention.keys_values(x)
        past = (jnp.concatenate([ck[i], keys[i]], 1), jnp.concatenate([cv[i], values[i]], 1))
        x_next = layer(x, allowed, past)  # y_t's keys and values join the cache for later steps:
        write = lambda buf, kv: jnp.where(has_prev, jax.lax.dynamic_update_slice_in_dim(buf, kv[:, :1], at, 1), buf)
        keys, values = keys.at[i].set(write(keys[i], k)), values.at[i].set(write(values[i], v))
        x = x_next
    logits = model.mlm_logits(x, jnp.ones((n, 1), jnp.int32))[:, 0]
    return logits, (keys, values)


@struct.dataclass
class CachedState:
    seq: jax.Array  # [N, max_len] int32
    t: jax.Array  # [] int32 prefix length of every row
    lengths: jax.Array  # [N] int32 tokens of each row's output
    done: jax.Array  # [N] bool
    keys: jax.Array  # [layers, N, max_len, heads, d] of y_1..y_(t-1)
    values: jax.Array


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _greedy(graphdef, state, inp, valid, lc, max_len, sampler: Sampler | None = None):
    """Greedy (or, given a sampler, sampled: inp["streams"] names each row's input) to the end."""
    compiles.record("cached_greedy" if sampler is None else "cached_sampled", inp["head"].shape, lc,
                    inp["projected"].shape[1], max_len)
    model = nnx.merge(graphdef, state)
    context = fill(model, inp, lc)
    ck, cv = context[:2]
    n = inp["h"].shape[0]
    shape = (ck.shape[0], n, max_len) + ck.shape[3:]
    loop = CachedState(seq=jnp.zeros((n, max_len), jnp.int32), t=jnp.int32(0), lengths=jnp.zeros(n, jnp.int32),
                       done=~valid, keys=jnp.zeros(shape, ck.dtype), values=jnp.zeros(shape, cv.dtype))

    def cond(s):
        return jnp.any(~s.done)

    def body(s):
        prev = s.seq[:, jnp.maximum(s.t - 1, 0)]
        logits, (keys, values) = step_logits(model, inp, context, (s.keys, s.values), prev, s.t)
        if sampler is None:
            tok = jnp.argmax(logits, -1).astype(jnp.int32)
        else:
            tok = sampler.pick(logits, inp["streams"], s.t)
        grow = ~s.done & (tok != vocab.STOP_ID)
        seq = jax.lax.dynamic_update_slice_in_dim(s.seq, jnp.where(grow, tok, 0)[:, None], s.t, 1)
        done = s.done | (tok == vocab.STOP_ID) | (s.t + 1 >= max_len)  # a row ends at [STOP] or max_len tokens
        return CachedState(seq, s.t + 1, s.lengths + grow, done, keys, values)
    return jax.lax.while_loop(cond, body, loop)


def context_buffer(ctxs) -> int:
    """Context positions a batch needs (head, regions, [END]), bucketed."""
    return engine.round_up(max(map(engine.fixed_positions, ctxs)), engine.BUFFER_BUCKET)


def _batches(model, pairs, regions, budget, max_len, batch_size, samples=1, sampled=False):
    """(indices, inputs, valid rows, graphdef, state, context buffer) per batch; similar contexts
    share a batch, and every batch has the shapes of the longest context. Each pair is `samples`
    rows; when sampled, inputs hold each row's "streams" (sampling.streams)."""
    ctxs = engine.contexts(pairs, budget)
    engine.check_positions(model, ctxs, max_len, beyond=max(-1, 3 - max_len))  # last query, or [END] at h + 3
    ids, ctxs = streams(ctxs, samples), [c for c in ctxs for _ in range(samples)]
    regions_of, (graphdef, state) = engine.cached_regions(regions), engine.eval_split(model)
    lc, ordered = context_buffer(ctxs), engine.order(ctxs)
    for start in range(0, len(ordered), batch_size):
        idx = ordered[start:start + batch_size]
        inp = engine.host_inputs([ctxs[i] for i in idx], regions_of, batch_size, model.cfg.feature_dim,
                                 sized_for=ctxs)
        valid, _ = inp.pop("valid"), inp.pop("fixed")
        if sampled:  # padding rows (valid False) are done from the start: any stream
            inp["streams"] = ids[np.resize(idx, batch_size)]
        inp["projected"] = engine.project(graphdef, state, {k: inp.pop(k) for k in engine.REGION_KEYS})
        yield idx, inp, valid, graphdef, state, lc


def greedy(model, pairs, regions=None, *, max_len=150, batch_size=32, budget=None, sampler=None,
           samples=1) -> list[np.ndarray]:
    """Greedy ids (no [STOP]) of a one-pass model for each pair, in input order; given a sampler,
    `samples` draws per pair instead, the samples of a pair next to each other."""
    out = [None] * (len(pairs) * samples)
    batches = _batches(model, pairs, regions, budget, max_len, batch_size, samples, sampler is not None)
    for idx, inp, valid, graphdef, state, lc in batches:
        loop = _greedy(graphdef, state, inp, valid, lc, max_len, sampler)
        seq, lengths = np.asarray(loop.seq), np.asarray(loop.lengths)
        for r, i in enumerate(idx):
            out[i] = seq[r, :lengths[r]].copy()
    return out


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6, 8))
def _beam(graphdef, state, inp, valid, lc, max_len, beam, length_penalty, ngram):
    compiles.record("cached_beam", inp["head"].shape, lc, inp["projected"].shape[1], max_len, beam, ngram)
    model = nnx.merge(graphdef, state)
    ck, cv, present = fill(model, inp, lc)  # once per sentence, then one copy per beam
    context = (jnp.repeat(ck, beam, 1), jnp.repeat(cv, beam, 1), jnp.repeat(present, beam, 0))
    rows = {k: jnp.repeat(v, beam, 0) for k, v in inp.items()}  # sentence-major [B * K, ...]
    b = inp["h"].shape[0]
    shape = (ck.shape[0], b * beam, max_len) + ck.shape[3:]
    loop = (initial_state(b, beam, max_len, valid), jnp.zeros(shape, ck.dtype), jnp.zeros(shape, cv.dtype))

    def body(carry):
        c, keys, values = carry
        prev = c.seq[:, :, jnp.maximum(c.s - 1, 0)].reshape(-1)
        logits, (keys, values) = step_logits(model, rows, context, (keys, values), prev, c.s)
        c, parents = select(c, logits, beam, length_penalty, ngram)
        rows_of = (jnp.arange(b)[:, None] * beam + parents).reshape(-1)  # each new hypothesis's parent row
        return c, keys[:, rows_of], values[:, rows_of]
    return jax.lax.while_loop(lambda carry: jnp.any(~carry[0].done), body, loop)[0]


def beam_search(model, pairs, regions=None, *, beam=4, max_len=150, batch_size=8, length_penalty=1.0,
                no_repeat_ngram=0, budget=None) -> list[tuple[np.ndarray, float]]:
    """(ids without [STOP], total log-probability) of a one-pass model's best hypothesis for
    each pair; the scoring and stopping rules of decode/beam.py."""
    if beam < 1 or no_repeat_ngram < 0:
        raise ValueError(f"need beam >= 1 and no_repeat_ngram >= 0, got {beam}, {no_repeat_ngram}")
    out = [None] * len(pairs)
    for idx, inp, valid, graphdef, state, lc in _batches(model, pairs, regions, budget, max_len, batch_size):
        loop = _beam(graphdef, state, inp, valid, lc, max_len, beam, np.float32(length_penalty), int(no_repeat_ngram))
        seq, n, logp = (np.asarray(x) for x in (loop.fin_seq, loop.fin_len, loop.fin_logp))
        for r, i in enumerate(idx):
            out[i] = (seq[r, :n[r]].copy(), float(logp[r]))
    return out
