"""Greedy decoding: a jitted `lax.while_loop` over the engine's staged buffers, with refill.

A row ends at its first `[STOP]` (not part of the output) or after max_len tokens. Rows never
interact, so the outputs are those of decoding each sentence alone, and they equal the
original's loop (decode/reference.py) token for token. Given a `sampling.Sampler`, the same loop
draws each token instead (decode/sampling.py), keyed by the input a row holds, not the row.
"""

from __future__ import annotations

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from bertgen_jax import compiles, vocab
from bertgen_jax.decode import engine
from bertgen_jax.decode.sampling import Sampler, streams

REFILL = 4  # a stage also ends once 1/REFILL of its rows are done and sentences wait


@struct.dataclass
class GreedyState:
    seq: jax.Array  # [N, max_len] int32 tokens generated so far
    t: jax.Array  # [N] int32 prefix length of each row
    done: jax.Array  # [N] bool

    def prefix_lengths(self):
        return self.t


@functools.partial(jax.jit, static_argnums=(0, 4))
def _stage(graphdef, state, inp, loop: GreedyState, lt, stop_at, sampler: Sampler | None = None):
    """Greedy steps (sampled ones given a sampler; then inp["streams"] names each row's input)
    while every unfinished row fits in lt positions and fewer than stop_at (traced) rows are done."""
    compiles.record("greedy" if sampler is None else "greedy_sampled", inp["head"].shape, lt,
                    inp["projected"].shape[1])
    model = nnx.merge(graphdef, state)
    fixed, rows = inp["fixed"], jnp.arange(inp["h"].shape[0])

    def cond(s):
        return jnp.any(~s.done) & engine.fits(s, fixed, lt) & (jnp.sum(s.done) < stop_at)

    def body(s):
        logits = engine.mask_logits(model, inp, s.seq, s.t, lt)
        if sampler is None:
            tok = jnp.argmax(logits, -1).astype(jnp.int32)
        else:
            tok = sampler.pick(logits, inp["streams"], s.t)
        grow = ~s.done & (tok != vocab.STOP_ID)
        at = jnp.minimum(s.t, s.seq.shape[1] - 1)
        seq, t = s.seq.at[rows, at].set(jnp.where(grow, tok, s.seq[rows, at])), s.t + grow
        return GreedyState(seq, t, s.done | (tok == vocab.STOP_ID) | (t >= seq.shape[1]))
    return jax.lax.while_loop(cond, body, loop)


def greedy(model, pairs, regions=None, *, max_len=150, batch_size=32, budget=None, sampler=None,
           samples=1) -> list[np.ndarray]:
    """Greedy ids for each pair (no [STOP]), in input order. budget: int or {task: int}.
    Given a sampler, `samples` draws per pair instead, the samples of a pair next to each other.

    The batch_size rows are refilled: between stages, a finished row hands its output back and
    takes the next waiting sentence (a stage also ends once 1/REFILL of the rows are done while
    sentences wait), so rows do not idle until the batch's longest output ends."""
    ctxs = engine.contexts(pairs, budget)
    engine.check_positions(model, ctxs, max_len)
    ids = streams(ctxs, samples) if sampler is not None else None
    ctxs = [c for c in ctxs for _ in range(samples)]
    regions_of, (graphdef, state) = engine.cached_regions(regions), engine.eval_split(model)
    n, waiting, out = batch_size, collections.deque(engine.order(ctxs)), [None] * len(ctxs)
    host = engine.host_inputs(ctxs[:1], regions_of, n, model.cfg.feature_dim, sized_for=ctxs)
    inp = {k: v for k, v in host.items() if k not in engine.REGION_KEYS + ("valid",)}  # the same arrays
    lt_max = engine.longest_buffer(ctxs, max_len)
    if sampler is not None:  # each row's (checksum, stream): its keys follow the input it holds
        inp["streams"] = np.zeros((n, 2), np.uint32)
    owner = np.full(n, -1)  # the pair each row decodes
    seq, t, done = np.zeros((n, max_len), np.int32), np.zeros(n, np.int32), np.ones(n, bool)
    while True:
        refilled = False
        for r in np.flatnonzero(done):
            if owner[r] >= 0:
                out[owner[r]], owner[r] = seq[r, :t[r]].copy(), -1
            if waiting:
                owner[r] = waiting.popleft()
                engine.set_row(host, r, ctxs[owner[r]], regions_of)
                if sampler is not None:
                    inp["streams"][r] = ids[owner[r]]
                seq[r], t[r], done[r], refilled = 0, 0, False, True
        if done.all():
            return out
        if refilled:  # every row again: the projection is per row, and one shape compiles once
            inp["projected"] = engine.project(graphdef, state, {k: host[k] for k in engine.REGION_KEYS})
        stop_at = done.sum() + (max(1, n // REFILL) if waiting else n)
        loop = _stage(graphdef, state, inp, GreedyState(seq, t, done),
                      engine.buffer_length(inp["fixed"], t, done, lt_max), np.int32(stop_at), sampler)
        seq, t, done = (np.array(x) for x in (loop.seq, loop.t, loop.done))  # writable host copies
