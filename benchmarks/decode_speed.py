"""Greedy decoding speed: decode/greedy.py (jitted while_loop over bucketed buffers, head at
`[MASK]` only, batch 32) against decode/reference.py (the original's loop: 8 sentences at a
time, tensor rebuilt one token longer each step, head at every position, one compile per shape)
on the same model and the same inputs, in one run:

    python -m benchmarks.decode_speed [--size tiny|small] [--sentences N] [--max-len 40] [--json PATH]

Inputs: ToyWorld tiny's IC, MMT and MT test pairs (generated into --root), taken in turn.
Model: random weights (ToyWorld vocabulary, 2048-d RoI features) whose `[STOP]` bias is bisected
until the mean greedy output length matches the mean reference target length, so rows stop at
ToyWorld-like, varied lengths (a random model otherwise never stops or stops at once). Both
decoders run once to compile (every bucket and every shape), then once timed; the outputs must
agree token for token. The machine may be shared: the load average is recorded with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bertgen_jax import compiles, vocab
from bertgen_jax.decode import greedy, reference
from bertgen_jax import toyworld
from bertgen_jax.data.prepare import prepare_annotations
from bertgen_jax.data.streams import stream_pairs
from bertgen_jax.model import BertGen, ModelConfig

SIZES = {"tiny": dict(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=128),
         "small": dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024)}


def toyworld_test_pairs(root: str):
    """(pairs of every test stream, IC / MMT / MT in turn, feature store, vocabulary size)."""
    if not os.path.exists(os.path.join(root, "manifest.json")):
        toyworld.generate(root, seed=0, scale="tiny")
    with open(os.path.join(root, "manifest.json")) as f:
        manifest = json.load(f)
    files = sorted({os.path.join(root, s["file"]) for s in manifest["streams"] if s["format"] == "jsonl"})
    store = prepare_annotations(files, os.path.join(root, "store"), progress=False)
    tok = vocab.load_tokenizer(os.path.join(root, manifest["vocab"]))
    by_task = {"ic": [], "mmt": [], "mt": []}
    for s in manifest["streams"]:
        if s["split"] == "test":
            by_task[s["task"]] += stream_pairs(s, root, tok, store, budget=512)
    mixed = [p for trio in zip(*by_task.values()) for p in trio]
    return mixed, store, manifest["vocab_size"]


def calibrate_stop_bias(model, pairs, store, max_len, target_len, steps=10):
    """Bisect the head's [STOP] bias until the mean greedy length is about target_len."""
    bias = np.array(model.mlm_head.bias[...])
    stop = np.eye(len(bias), dtype=np.float32)[vocab.STOP_ID]
    lo, hi = -30.0, 30.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        model.mlm_head.bias[...] = jnp.asarray(bias + mid * stop)
        mean = np.mean([len(o) for o in greedy.greedy(model, pairs, store, max_len=max_len)])
        lo, hi = (mid, hi) if mean > target_len else (lo, mid)
    return mid


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--sentences", type=int, default=96)
    ap.add_argument("--max-len", type=int, default=40,
                    help="decode length cap (RESULTS.md's figures: 40; the demo config decodes up to 48)")
    ap.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "bertgen_toyworld_tiny"))
    ap.add_argument("--json")
    args = ap.parse_args()

    pairs, store, vocab_size = toyworld_test_pairs(args.root)
    pairs = (pairs * (args.sentences // len(pairs) + 1))[:args.sentences]
    cfg = ModelConfig(vocab_size=vocab_size, feature_dim=store.feature_dim, visual_ln_init=1.0, **SIZES[args.size])
    model = BertGen(cfg, nnx.Rngs(0))
    target_len = float(np.mean([len(p.tgt_ids) for p in pairs]))
    stop_bias = calibrate_stop_bias(model, pairs, store, args.max_len, target_len)  # compiles ours
    n_compiles = sum(compiles.COUNTS.values())  # over the 10 calibration decodes: once per bucket
    load_before = os.getloadavg()

    ours, _ = timed(lambda: greedy.greedy(model, pairs, store, max_len=args.max_len))  # warm-up
    ours, ours_s = timed(lambda: greedy.greedy(model, pairs, store, max_len=args.max_len))
    ref, _ = timed(lambda: reference.reference_greedy(model, pairs, store, max_len=args.max_len))  # compiles
    ref, ref_s = timed(lambda: reference.reference_greedy(model, pairs, store, max_len=args.max_len))
    lengths = [len(o) for o in ours]
    result = {
        "size": args.size, "sentences": len(pairs), "max_len": args.max_len, "model": SIZES[args.size],
        "vocab_size": vocab_size, "feature_dim": store.feature_dim, "stop_bias": stop_bias,
        "mean_output_len": float(np.mean(lengths)), "capped_at_max_len": int(sum(n == args.max_len for n in lengths)),
        "mean_reference_target_len": target_len,
        "jitted_sentences_per_s": len(pairs) / ours_s, "reference_sentences_per_s": len(pairs) / ref_s,
        "speedup": ref_s / ours_s, "jitted_compiles": n_compiles,
        "identical_outputs": all(np.array_equal(a, b) for a, b in zip(ours, ref)),
        "device": str(jax.devices()[0]), "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "load_average_before_after": [load_before[0], os.getloadavg()[0]],
    }
    print(f"{len(pairs)} ToyWorld test sentences (IC/MMT/MT), max_len {args.max_len}, model {args.size} "
          f"{SIZES[args.size]}, mean output {result['mean_output_len']:.1f} tokens "
          f"({result['capped_at_max_len']} capped), reference targets {target_len:.1f}")
    print(f"jitted greedy (batch 32):            {result['jitted_sentences_per_s']:8.1f} sentences/s "
          f"({n_compiles} compiles over 11 decodes of these inputs)")
    print(f"reference greedy (batch 8, growing): {result['reference_sentences_per_s']:8.1f} sentences/s")
    print(f"speed-up {result['speedup']:.1f}x; identical outputs: {result['identical_outputs']}; "
          f"load average {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
