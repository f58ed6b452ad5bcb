"""Buffer positions our greedy decoder computes per sentence per pass, against the original's
loop and the sentences' real tokens, on benchmarks/workload.py pairs (a count, not a timing):

    python -m benchmarks.decode_positions [--size base] [--sentences 256] [--batch 64] [--max-len 20]

Random weights never emit `[STOP]`, so every row runs to max_len and a stage's passes are the
growth of the prefix length t. The reference's count follows torch_reference.greedy_original:
chunks of 8, every pass padded to the chunk's longest row, max_len + 1 passes.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
from flax import nnx

from benchmarks import workload
from benchmarks.run import MICRO, model_config
from bertgen_jax.decode import engine, greedy
from bertgen_jax.data.pipeline import DEFAULT_BUDGETS
from bertgen_jax.model import BertGen


def count(sentences: int, batch: int, max_len: int, seed: int = 1, size: str = "base") -> dict:
    """The pairs are run.py's decode pairs for `size` (its vocabulary draws them); the model
    decoding them is micro-sized with that vocabulary: the count does not depend on the model."""
    cfg = dataclasses.replace(MICRO, vocab_size=model_config(size).vocab_size)
    pairs, regions_of = workload.synthetic_pairs(sentences, seed, cfg.vocab_size, feature_dim=cfg.feature_dim)
    stages = []
    run_stage = greedy._stage

    def logged(graphdef, state, inp, carry, lt, *rest):
        t0 = np.asarray(carry.t)
        out = run_stage(graphdef, state, inp, carry, lt, *rest)
        stages.append((inp["h"].shape[0], lt, int(np.max(np.asarray(out.t) - t0))))
        return out
    greedy._stage = logged
    try:
        greedy.greedy(BertGen(cfg, nnx.Rngs(0)), pairs, regions_of, max_len=max_len, batch_size=batch,
                      budget=DEFAULT_BUDGETS)
    finally:
        greedy._stage = run_stage
    ctxs = engine.contexts(pairs, DEFAULT_BUDGETS)
    tokens = lambda c, t: len(c.head) + t + 2 + c.regions + 1  # [MASK] [SEP] regions [END]
    reference = sum(len(chunk) * max(tokens(c, t) for c in chunk)
                    for chunk in (ctxs[i:i + 8] for i in range(0, len(ctxs), 8)) for t in range(max_len + 1))
    return {"ours": sum(r * lt * p for r, lt, p in stages) / (sentences * max_len),
            "reference": reference / (sentences * (max_len + 1)),
            "real": float(np.mean([tokens(c, t) for c in ctxs for t in range(max_len)])),
            "stages": stages}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="base", choices=["micro", *workload.SIZES])
    ap.add_argument("--sentences", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=20)
    args = ap.parse_args(argv)
    got = count(args.sentences, args.batch, args.max_len, size=args.size)
    print(f"positions per sentence per pass: ours {got['ours']:.1f} (batch {args.batch}), reference "
          f"{got['reference']:.1f} (batch 8), real {got['real']:.1f}; stages (rows, buffer, passes): {got['stages']}")


if __name__ == "__main__":
    main()
