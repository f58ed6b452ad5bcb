"""Decoding: `generate` is the one entry (train, evaluate and generate.py call it).

  engine.py     buffers, the layout each step builds, stages, RoIs projected once per batch
  greedy.py     greedy search with refill (the original's decoding, batched and jitted)
  beam.py       beam search (beyond the original), length penalty, n-gram blocking
  cached.py     greedy and beam search of a one-pass model, with a key/value cache
  sampling.py   sampling (temperature, top-k, top-p) in greedy's loops, keys that follow the input
  reference.py  the original's plain loop, teacher-forced scoring, and one-pass decoding
                without a cache: what tests and benchmarks compare the decoders with
"""

from __future__ import annotations

import numpy as np

from bertgen_jax.data.one_pass import OBJECTIVES
from bertgen_jax.decode import cached, engine, sampling  # noqa: F401 (engine: for callers that size buffers)
from bertgen_jax.decode.beam import beam_search
from bertgen_jax.decode.greedy import greedy as greedy_search


def generate(model, pairs, regions=None, *, beam=1, max_len=150, batch_size=32, budget=None,
             length_penalty=1.0, no_repeat_ngram=0, objective=None, do_sample=False, temperature=1.0,
             top_k=None, top_p=1.0, seed=0, num_return_sequences=1) -> list[np.ndarray] | list[list[np.ndarray]]:
    """Output ids (no [STOP]) for each pair, in input order: greedy search when beam == 1, beam
    search of that width otherwise. regions: a feature store or image -> (boxes, features, wh);
    budget: int or {task: int} context tokens (see engine.py).

    do_sample: draw each token (greedy's loop, beam 1) from the softmax of logits / temperature
    cut to the top_k tokens (None: all), then to the smallest set reaching mass top_p (1: all),
    Hugging Face generate's names (decode/sampling.py). seed fixes the draws whatever the batch
    size or input order; num_return_sequences > 1 returns a list of that many outputs per pair.

    The decoder follows the objective the model was trained with (model.cfg.objective): the
    original's layout for "unrolled", the cached one-pass decoder for "one_pass". `objective`,
    when given, must agree with it."""
    trained = model.cfg.objective
    if trained not in OBJECTIVES or (objective is not None and objective not in OBJECTIVES):
        raise ValueError(f"objective {objective or trained!r} is not one of {OBJECTIVES}")
    if objective is not None and objective != trained:
        raise ValueError(f"this model was trained with objective={trained!r} and cannot be decoded as "
                         f"{objective!r}: its model_config.json decides the decoder")
    if beam < 1:
        raise ValueError(f"beam={beam}: 1 (greedy) or more (beam width)")
    sampling.check(do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                   num_return_sequences=num_return_sequences, beam=beam)
    one_pass = trained == "one_pass"
    if do_sample:
        n = num_return_sequences
        drawn = (cached.greedy if one_pass else greedy_search)(
            model, pairs, regions, max_len=max_len, batch_size=batch_size, budget=budget,
            sampler=sampling.Sampler.make(seed, temperature, top_k, top_p), samples=n)
        return drawn if n == 1 else [drawn[i:i + n] for i in range(0, len(drawn), n)]
    if beam == 1:
        search = cached.greedy if one_pass else greedy_search
        return search(model, pairs, regions, max_len=max_len, batch_size=batch_size, budget=budget)
    search = cached.beam_search if one_pass else beam_search
    found = search(model, pairs, regions, beam=beam, max_len=max_len, batch_size=batch_size,
                   length_penalty=length_penalty, no_repeat_ngram=no_repeat_ngram, budget=budget)
    return [ids for ids, _ in found]
