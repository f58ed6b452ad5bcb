"""Sampling (beyond the original): the token choice that replaces greedy's arg-max, and the keys.

`choose` divides the logits by the temperature, keeps the top_k best tokens (0 inside, unset in the API: all), then of
those the smallest set whose probability (renormalised over the top_k) reaches top_p, and draws
one token from what is left: Hugging Face generate's order and names (t5x's conventions: a
temperature divides the logits, top-p keeps the token that crosses p).

The options are traced (a `Sampler` pytree), so every temperature, top_k, top_p and seed runs
in the one compile a decoder's bucket gets for sampling.

Keys follow the input, never the row a decoder puts it in: the key of a step is the root key of
the seed folded with a checksum of the input's context, its stream number (occurrence of that
context in the call x num_return_sequences + sample index) and the step (the prefix length).
Batch size, refill order and input order then change no output; repeating an input N times
draws what one input with num_return_sequences=N draws.
"""

from __future__ import annotations

import collections
import zlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

# top_p compares float32 sums of a softmax: a mass within TOP_P_SLACK of p counts as reaching it,
# so a hand-made distribution whose tokens sum to exactly p is not split by rounding (a float32
# softmax and a short cumsum are off by a few 1e-8; 1e-6 leaves a wide margin and moves no real
# decision: a tail of mass <= 1e-6 is never drawn in practice).
TOP_P_SLACK = 1e-6


@struct.dataclass
class Sampler:
    """Traced sampling options (scalars), one per decode."""
    seed: jax.Array  # [] uint32
    temperature: jax.Array  # [] float32 > 0
    top_k: jax.Array  # [] int32, 0: off
    top_p: jax.Array  # [] float32 in (0, 1], 1: off

    @classmethod
    def make(cls, seed=0, temperature=1.0, top_k=None, top_p=1.0) -> "Sampler":
        return cls(np.uint32(seed), np.float32(temperature), np.int32(top_k or 0), np.float32(top_p))

    def pick(self, logits, streams, step):
        """Tokens [N] int32 drawn from logits [N, V]; streams [N, 2] uint32 (checksum, stream
        number) of each row's input; step [N] or [] int32, each row's prefix length."""
        keys = row_keys(self.seed, streams, jnp.broadcast_to(step, streams.shape[:1]))
        return choose(logits, keys, self.temperature, self.top_k, self.top_p)


def check(*, do_sample=False, temperature=1.0, top_k=None, top_p=1.0, seed=0, num_return_sequences=1, beam=1):
    """A one-line ValueError naming the first bad option (Hugging Face generate's names)."""
    if do_sample and not temperature > 0:
        raise ValueError(f"temperature={temperature}: must be > 0 when sampling (for greedy, do_sample=False)")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p}: must be in (0, 1] (1: off)")
    if top_k is not None and (int(top_k) != top_k or top_k < 1):
        raise ValueError(f"top_k={top_k}: must be an integer >= 1 (leave it unset for no top-k cut)")
    if int(seed) != seed or not 0 <= seed < 2 ** 32:
        raise ValueError(f"seed={seed}: must be an integer in [0, 2**32)")
    if int(num_return_sequences) != num_return_sequences or num_return_sequences < 1:
        raise ValueError(f"num_return_sequences={num_return_sequences}: must be an integer >= 1")
    if not do_sample:
        changed = [f"{k}={v}" for k, v, off in (("temperature", temperature, 1.0), ("top_k", top_k, None),
                                                ("top_p", top_p, 1.0)) if v != off]
        if changed or num_return_sequences > 1:  # greedy and beam would ignore them silently
            option = (changed or [f"num_return_sequences={num_return_sequences}"])[0]
            raise ValueError(f"{option} needs do_sample=True (greedy and beam search return one output)")
    elif beam > 1:
        raise ValueError(f"beam={beam} with do_sample: sampling draws one token at a time; use beam=1")


def filter_logits(logits, temperature, top_k, top_p):
    """logits [N, V] / temperature, float32, with -inf for every token that top_k and top_p drop."""
    x = logits.astype(jnp.float32) / temperature
    n, v = x.shape
    order = jnp.argsort(x, axis=-1, descending=True, stable=True)  # ties: lower id first, as argmax
    ranked = jnp.take_along_axis(x, order, -1)
    in_top_k = (top_k <= 0) | (jnp.arange(v) < top_k)  # by rank: exactly k even among ties
    probs = jax.nn.softmax(jnp.where(in_top_k, ranked, -jnp.inf), -1)
    before = jnp.cumsum(probs, -1) - probs  # mass of the better-ranked tokens kept by top_k
    # A token is kept while the mass before it has not reached p: the best one always is.
    keep = in_top_k & ((before < top_p - TOP_P_SLACK) | (top_p >= 1))
    kept = jnp.zeros((n, v), bool).at[jnp.arange(n)[:, None], order].set(keep)
    return jnp.where(kept, x, -jnp.inf)


def choose(logits, key, temperature, top_k, top_p):
    """Tokens [N] int32: one draw per row from softmax(filter_logits(...)); key: [N] keys."""
    filtered = filter_logits(logits, temperature, top_k, top_p)
    return jax.vmap(jax.random.categorical)(key, filtered).astype(jnp.int32)


def row_keys(seed, streams, step):
    """[N] keys: root(seed) folded with each row's checksum, stream number and step."""
    root = jax.random.key(seed)
    fold = lambda s, t: jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(root, s[0]), s[1]), t)
    return jax.vmap(fold)(streams, step)


def streams(ctxs, samples: int) -> np.ndarray:
    """[len(ctxs) * samples, 2] uint32: (context checksum, stream number) of each decoded row,
    the samples of an input next to each other (see the module docstring)."""
    seen, out = collections.Counter(), []
    for c in ctxs:
        crc = zlib.crc32(np.asarray(c.head, np.int32).tobytes() + np.array([c.image, c.regions], np.int64).tobytes())
        out += [(crc, seen[crc] * samples + s) for s in range(samples)]
        seen[crc] += 1
    return np.array(out, np.uint32).reshape(-1, 2)
