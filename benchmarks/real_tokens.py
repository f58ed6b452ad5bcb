"""Real-token fraction of training batches on the ToyWorld demo mix: packed rows against the
faithful layout (one example per row) and the original's padding to the longest in the batch.

    python -m benchmarks.real_tokens [--batches 50] [--json PATH]
"""

import argparse
import json
import os
import time

import numpy as np

from bertgen_jax import vocab
from bertgen_jax import toyworld
from bertgen_jax.data.pipeline import BatchIterator, Stream
from bertgen_jax.data.prepare import prepare_annotations
from bertgen_jax.data.rows import RowSpec, real_token_fraction
from bertgen_jax.data.streams import stream_pairs
from bertgen_jax.layout import KIND_PAD


def toyworld_train_streams(root: str, budgets: dict):
    manifest_file = os.path.join(root, "manifest.json")
    if not os.path.exists(manifest_file):
        toyworld.generate(root, seed=0, scale="demo")
    with open(manifest_file) as f:
        manifest = json.load(f)
    jsonl = sorted({os.path.join(root, s["file"]) for s in manifest["streams"] if s["format"] == "jsonl"})
    store = prepare_annotations(jsonl, os.path.join(root, "store"), progress=False)
    tok = vocab.load_tokenizer(os.path.join(root, manifest["vocab"]))
    train = [s for s in manifest["streams"] if s["split"] == "train"]
    streams = [Stream(s["name"], stream_pairs(s, root, tok, store, budgets[s["task"]])) for s in train]
    return streams, store


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "bertgen_toyworld_demo"))
    ap.add_argument("--batches", type=int, default=50)
    ap.add_argument("--window", type=int, default=32, help="open pairs per batch (data.window; 32 as training)")
    ap.add_argument("--json")
    args = ap.parse_args()
    budgets = {"ic": 96, "mmt": 96, "mt": 512}  # ToyWorld's visual examples reach 94 positions
    streams, store = toyworld_train_streams(args.root, budgets)
    print(f"{len(streams)} training streams, {sum(len(s.pairs) for s in streams)} pairs")

    packed_spec = RowSpec(length=256, targets=48, regions=64, feature_dim=store.feature_dim)
    t0 = time.perf_counter()
    packed = BatchIterator(streams, store, packed_spec, rows_per_batch=16, budget_for=budgets, window=args.window)
    fractions = [real_token_fraction(next(packed)) for _ in range(args.batches)]
    packed_time = time.perf_counter() - t0

    # The original: one example per stream per step, each row padded to the longest in the batch.
    longest = max(len(p.src_ids) + len(p.tgt_ids) + p.num_regions + 6 for s in streams for p in s.pairs)
    faithful_spec = RowSpec(length=longest, targets=1, regions=64, feature_dim=store.feature_dim)
    faithful = BatchIterator(streams, store, faithful_spec, rows_per_batch=len(streams), mode="faithful",
                             budget_for=budgets)
    fixed, to_longest = [], []
    for _ in range(args.batches):
        batch = next(faithful)
        real = batch["token_kind"] != KIND_PAD
        fixed.append(real_token_fraction(batch))
        to_longest.append(real.sum() / (real.shape[0] * real.sum(1).max()))
    result = {
        "real_token_fraction": float(np.mean(fractions)),
        "faithful_fixed_length_fraction": float(np.mean(fixed)),
        "original_pad_to_longest_fraction": float(np.mean(to_longest)),
        "packed_host_batches_per_s": args.batches / packed_time,
        "batches": args.batches,
        "window": args.window,
    }
    print(f"packed rows (16 x 256 tokens, 48 targets, window {args.window}): real-token fraction {result['real_token_fraction']:.3f}")
    print(f"faithful rows padded to {longest}: {result['faithful_fixed_length_fraction']:.3f}")
    print(f"original (one example per stream, padded to the batch's longest): "
          f"{result['original_pad_to_longest_fraction']:.3f}")
    print(f"packed host batches/s (single thread, no prefetch): {result['packed_host_batches_per_s']:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
