"""Beam search over the engine's fixed, staged buffers (decode/engine.py), beyond the original,
which only decodes greedily. B sentences x K beams run as B * K rows of one jitted
`lax.while_loop`; beam 1 is greedy exactly.

Score of a finished hypothesis = logprob / length ** length_penalty, where length = forward
passes it took = tokens + 1 with `[STOP]`, max_len when capped (a capped hypothesis has no
`[STOP]` term in its logprob)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from bertgen_jax import compiles, vocab
from bertgen_jax.decode import engine


def _block_repeats(logp, seq, s, n):
    """logp [B, K, V] with -inf for tokens that would repeat an n-gram of the prefix seq[..., :s]."""
    m, i = seq.shape[-1], jnp.arange(seq.shape[-1])
    ok = jnp.broadcast_to(i + n - 1 < s, seq.shape)  # the n-gram starting at i lies in the prefix
    for k in range(n - 1):  # ... and its first n-1 tokens equal the prefix's last n-1
        tail = jnp.take(seq, jnp.clip(s - (n - 1) + k, 0, m - 1), axis=2)
        ok &= jnp.take(seq, jnp.clip(i + k, 0, m - 1), axis=2) == tail[..., None]
    nxt = jnp.take(seq, jnp.clip(i + n - 1, 0, m - 1), axis=2)  # [B, K, M] the token it bans
    b, k = jnp.indices(seq.shape[:2])
    return logp.at[b[..., None], k[..., None], nxt].min(jnp.where(ok, -jnp.inf, jnp.inf))


@struct.dataclass
class BeamState:
    s: jax.Array  # [] int32 step: every live hypothesis has s tokens
    seq: jax.Array  # [B, K, max_len] int32 live hypotheses
    live: jax.Array  # [B, K] float32 their log-probabilities (-inf: none)
    n_fin: jax.Array  # [B] int32 hypotheses finished so far
    fin_seq: jax.Array  # [B, max_len] int32 the best finished hypothesis
    fin_len: jax.Array  # [B] int32 its tokens
    fin_logp: jax.Array  # [B] float32 its log-probability
    fin_score: jax.Array  # [B] float32 its score
    done: jax.Array  # [B] bool

    def prefix_lengths(self):
        return jnp.broadcast_to(self.s, self.done.shape)


def initial_state(batch_size, beam, max_len, valid) -> BeamState:
    # Only beam 0 is alive at first, so the K beams do not start as K copies.
    live = np.tile(np.where(np.arange(beam) == 0, 0.0, -np.inf).astype(np.float32), (batch_size, 1))
    zeros, none = lambda *shape: np.zeros(shape, np.int32), np.full(batch_size, -np.inf, np.float32)
    return BeamState(s=np.int32(0), seq=zeros(batch_size, beam, max_len), live=live, n_fin=zeros(batch_size),
                     fin_seq=zeros(batch_size, max_len), fin_len=zeros(batch_size), fin_logp=none,
                     fin_score=none, done=~valid)


def select(c: BeamState, logits, beam, length_penalty, ngram) -> tuple[BeamState, jax.Array]:
    """One beam step from the logits [B * K, V] of the live hypotheses' next token: the new state
    and each new live hypothesis's parent [B, K] (what a decoder with a cache reorders it by).
    Sentences already done keep their state."""
    s, seq, done = c.s, c.seq, c.done
    b_size, m = c.fin_seq.shape
    bi = jnp.arange(b_size)
    norm = lambda logp, length: logp / jnp.asarray(length, jnp.float32) ** length_penalty
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1).reshape(b_size, beam, -1)
    if ngram:
        logp = _block_repeats(logp, seq, s, ngram)
    v = logp.shape[-1]
    cand = (c.live[..., None] + logp).reshape(b_size, beam * v)  # [B, K * V]
    # Finished: a [STOP] (at max_len any token) among the top K candidates, as fairseq; K = 1 is greedy.
    val, idx = jax.lax.top_k(cand, beam)
    last = s == m - 1
    fin = ((idx % v == vocab.STOP_ID) | last) & (val > -jnp.inf)
    first = jnp.argmax(fin, 1)  # the best finisher; all of this step have length s + 1
    f_tok, f_par = idx[bi, first] % v, idx[bi, first] // v
    f_score = norm(val[bi, first], s + 1)
    better = fin.any(1) & (f_score > c.fin_score)
    f_seq = seq[bi, f_par].at[:, s].set(jnp.where(f_tok == vocab.STOP_ID, 0, f_tok))
    # Live: the top K candidates that do not stop.
    no_stop = jnp.where(jnp.arange(beam * v) % v == vocab.STOP_ID, -jnp.inf, cand)
    l_val, l_idx = jax.lax.top_k(no_stop, beam)
    parents = l_idx // v
    l_seq = jnp.take_along_axis(seq, parents[..., None], 1).at[:, :, s].set(l_idx % v)
    fin_score = jnp.where(better, f_score, c.fin_score)
    # No live hypothesis can still beat the best finished: raw logp only falls, length <= max_len.
    bound = jnp.maximum(norm(l_val, s + 2), norm(l_val, m)).max(1)
    n_fin = c.n_fin + fin.sum(1)
    new = BeamState(s=s + 1, seq=l_seq, live=l_val, n_fin=n_fin,
                    fin_seq=jnp.where(better[:, None], f_seq, c.fin_seq),
                    fin_len=jnp.where(better, s + (f_tok != vocab.STOP_ID), c.fin_len),
                    fin_logp=jnp.where(better, val[bi, first], c.fin_logp), fin_score=fin_score,
                    done=done | last | (n_fin >= beam) | (fin_score >= bound))
    keep = lambda old, x: x if x.ndim == 0 else jnp.where(done.reshape((-1,) + (1,) * (x.ndim - 1)), old, x)
    return jax.tree.map(keep, c, new), jnp.where(done[:, None], jnp.arange(beam)[None], parents)


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 7))
def _stage(graphdef, state, inp, loop: BeamState, lt, beam, length_penalty, ngram):
    compiles.record("beam", inp["head"].shape, lt, inp["projected"].shape[1], beam, ngram)
    fixed = inp["fixed"]
    b_size, m = loop.fin_seq.shape
    rows = {k: jnp.repeat(v, beam, axis=0) for k, v in inp.items()}  # sentence-major [B * K, ...]
    model = nnx.merge(graphdef, state)

    def cond(c):
        return jnp.any(~c.done) & engine.fits(c, fixed, lt)

    def body(c):
        t = jnp.full((b_size * beam,), c.s, jnp.int32)
        logits = engine.mask_logits(model, rows, c.seq.reshape(-1, m), t, lt)
        return select(c, logits, beam, length_penalty, ngram)[0]
    return jax.lax.while_loop(cond, body, loop)


def beam_search(model, pairs, regions=None, *, beam=4, max_len=150, batch_size=8, length_penalty=1.0,
                no_repeat_ngram=0, budget=None) -> list[tuple[np.ndarray, float]]:
    """(ids without [STOP], total log-probability) of the best hypothesis of each pair.

    Score = logprob / length ** length_penalty (length counts [STOP]; 0 = raw logprob). [STOP]
    ends a hypothesis when among the step's top `beam` candidates (fairseq; beam 1 is greedy); a
    sentence ends with `beam` such, at max_len, or when no live hypothesis can still win.
    no_repeat_ngram=n > 0 forbids any n-gram twice in a hypothesis."""
    if beam < 1 or no_repeat_ngram < 0:
        raise ValueError(f"need beam >= 1 and no_repeat_ngram >= 0, got {beam}, {no_repeat_ngram}")
    out = [None] * len(pairs)
    for idx, graphdef, state, inp, lt_max in engine.fixed_batches(model, pairs, regions, budget, max_len, batch_size):
        loop = initial_state(batch_size, beam, max_len, inp["valid"])
        stage = lambda c, lt: _stage(graphdef, state, inp, c, lt, beam, np.float32(length_penalty),
                                     int(no_repeat_ngram))
        loop = engine.run_stages(stage, loop, inp["fixed"], lt_max)
        seq, n, logp = (np.asarray(x) for x in (loop.fin_seq, loop.fin_len, loop.fin_logp))
        for r, i in enumerate(idx):
            out[i] = (seq[r, :n[r]].copy(), float(logp[r]))
    return out
