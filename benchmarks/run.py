"""Ours (JAX, packed rows, head at `[MASK]` only) against the original's way of computing
(benchmarks/torch_reference.py) on the same synthetic workload and model size, in one command:

    python benchmarks/run.py --size base [--steps N] [--decode-sentences N] [--json PATH] [--phases]
    python benchmarks/run.py --size base --device gpu [--dtype bfloat16] --json PATH
    python benchmarks/run.py --size demo|base --one-pass [--steps N] --max-len 48 --json PATH

`--one-pass` adds the one-pass objective (benchmarks/one_pass_sides.py): a third training side
(ours with objective "one_pass", `--one-pass-rows` rows a step) and the cached decoder beside
our greedy and the reference's. All training sides then train the same pairs, those of the
one-pass steps (`--steps` counts those), so each makes the same predictions; the ratios are
of predictions (label slots of weight > 0) per second. Without it, the workload is as below.

`--device gpu` runs both sides on the first CUDA GPU (JAX's CUDA backend, torch on cuda) with
per-size GPU defaults (more rows per step, more sentences, our decode batch 64; the
reference's stays 8); float32 there means TF32 matmuls on both sides (JAX's
jax_default_matmul_precision 'tensorfloat32', torch's 'high'), and the peak is a TF32 matmul too.
`--dtype bfloat16`: our ModelConfig.dtype (parameters stay float32) and torch.autocast on the
reference; the peak is then a bf16 matmul. On a GPU peak memory is the device's (JAX's
peak_bytes_in_use, torch.cuda.max_memory_allocated less the reference's batches other than the
largest, which it holds on the GPU before timing), on a CPU the process's peak RSS.
`--decode-only` runs the decoding comparison alone, in one subprocess.

Training: our BatchIterator packs one stream of benchmarks/workload.py pairs into rows of 256
tokens, 12 `[MASK]` slots, 64 region slots. The reference trains on EXACTLY the same unrolled
examples (unpacked from our batches: tokens, label, the example's own regions), the same number
per step, but shuffled across the timed steps (the original samples examples independently);
one example per row padded to the step's longest, the head at every position, fused AdamW.
Both: dropout 0.1, grad-norm clip 10, AdamW (wd 1e-4, eps 1e-6), `--dtype`. Batches are built
before timing (build time reported apart); `--warmup` steps (the compile) go untimed; every
step is waited for; rates are medians over the timed steps of each step's rate.

Decoding: the same pairs and weights (ours copied into PyTorch by load_from_jax). Ours is
decode/greedy.py (while_loop over bucketed buffers, head at `[MASK]`), timed on its second run
(the first compiles); the reference is greedy_original (8 at a time, the tensor rebuilt one
token longer each step, head everywhere). Random weights never emit `[STOP]`, so every
sentence runs to `--max-len` (default 20, about the workload's mean target length).

The sides and the workload they share are in benchmarks/sides.py; this file parses, runs them,
compares and prints. Each side runs in its own subprocess, one after the other, so peak RSS (ru_maxrss) is its own
(the decode runs after the reference's RSS is read). MFU = useful FLOPs/s (flops.py) / the
machine's peak: the best of `--peak-n`^3 jnp.dot and torch.mm in `--dtype` (2048 on a CPU,
8192 on a GPU) timed in the same run. The machine
is shared: the load average at the start and end of each side goes with its figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # `python benchmarks/run.py` puts benchmarks/, not the repo, on the path
    sys.path.insert(0, REPO)

import numpy as np  # noqa: E402

from benchmarks import workload  # noqa: E402
from benchmarks import one_pass_sides, sides  # noqa: E402
from benchmarks.sides import ROW_LENGTH  # noqa: E402
from bertgen_jax.model import ModelConfig  # noqa: E402

# A test-only size: small enough for an end-to-end run in seconds.
MICRO = ModelConfig(vocab_size=500, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                    feature_dim=16, box_frequencies=4)
# Per size: rows per step, timed steps, sentences decoded. Base keeps the reference's steps at
# tens of seconds each (full 119,547-way head over every padded position) on 2 cores.
DEFAULTS = {"micro": (2, 2, 8), "tiny": (8, 10, 32), "small": (8, 5, 16), "base": (4, 3, 8)}
# On a GPU: enough rows that a step is not all launch overhead; base at 32 rows (~150 examples)
# keeps the reference's full-vocabulary logits and their gradients (~200 positions each) in memory.
GPU_DEFAULTS = {"micro": (2, 2, 8), "tiny": (64, 20, 512), "small": (64, 20, 512), "base": (32, 10, 256)}
DEFAULTS["demo"], GPU_DEFAULTS["demo"] = DEFAULTS["tiny"], GPU_DEFAULTS["tiny"]
# One-pass rows per step (--one-pass): a one-pass row holds ~58 predictions. At base on a CPU,
# 4 rows (the unrolled side's 1,024 token positions a step) cost 1.36 s a row against 1.5 (2
# rows) and 1.9 (1 row); the reference, training the same pairs at ~2 predictions/s, then takes
# about 2 minutes a timed step.
ONE_PASS_ROWS = {"micro": 1, "demo": 4, "tiny": 4, "small": 2, "base": 4}
GPU_ONE_PASS_ROWS = {"micro": 1, "demo": 16, "tiny": 16, "small": 16, "base": 8}
SIDES = {**sides.SIDES, "one_pass": one_pass_sides.side_one_pass}


def model_config(name: str, dtype: str = "float32") -> ModelConfig:
    return dataclasses.replace(MICRO if name == "micro" else workload.size(name), dtype=dtype)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


# -- the parent: run the sides, compare, print, write ------------------------------------------

def _run_side(name: str, argv: list[str], gpu: bool) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    # libgomp's idle threads spin: on a shared machine that makes PyTorch 5-20x slower on small
    # ops (a descheduled peer stalls every barrier); passive waiting is its best setting here.
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ}
    if gpu:
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # the torch side's decode holds JAX and torch
    try:
        start = time.perf_counter()
        subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--side", name, "--side-out", path],
                       check=True, cwd=REPO, env=env)
        print(f"[{name} side: {time.perf_counter() - start:.0f} s]", file=sys.stderr)
        with open(path) as f:
            return json.load(f)
    finally:
        os.unlink(path)


def compare(ours: dict, ref: dict, dec: dict | None) -> dict:
    peak = max(ours["peak_flops"], ref["peak_flops"])
    out = {"train_ratio": ours["examples_per_s"] / ref["examples_per_s"],
           "decode_ratio": dec["ours_sentences_per_s"] / dec["reference_sentences_per_s"] if dec else None,
           "mfu": ours["useful_flops_per_s"] / peak, "reference_mfu": ref["useful_flops_per_s"] / peak,
           "mfu_vs_jnp_dot": ours["useful_flops_per_s"] / ours["peak_flops"],
           "peak_flops": peak, "real_token_fraction": ours["real_token_fraction"],
           "reference_real_token_fraction": ref["real_token_fraction"],
           "memory_ratio": ours["maxrss_gib"] / ref["maxrss_gib"]}
    if "gpu_peak_gib" in ours:
        out["memory_ratio"] = ours["gpu_peak_gib"] / ref["gpu_peak_gib"]
    if ours["useful_flops"] != ref["useful_flops"] or ours["examples"] != ref["examples"]:
        raise AssertionError("the two sides trained on different examples: "
                             f"{ours['examples']} vs {ref['examples']} examples")
    return out


def table(args, cfg, ours, ref, dec, cmp) -> str:
    g = lambda x: f"{x:,.1f}" if x >= 10 else f"{x:.3g}"
    rows = [("unrolled examples/s", ours["examples_per_s"], ref["examples_per_s"]),
            ("target tokens/s", ours["target_tokens_per_s"], ref["target_tokens_per_s"]),
            ("real-token fraction", ours["real_token_fraction"], ref["real_token_fraction"]),
            ("useful GFLOP/s", ours["useful_flops_per_s"] / 1e9, ref["useful_flops_per_s"] / 1e9),
            ("MFU (of the machine's peak)", cmp["mfu"], cmp["reference_mfu"]),
            ("peak RSS GiB (training process)", ours["maxrss_gib"], ref["maxrss_gib"]),
            ("step s (median of timed)", float(np.median(ours["step_s"])), float(np.median(ref["step_s"])))]
    if "gpu_peak_gib" in ours:
        rows.insert(-1, ("peak GPU memory GiB (training)", ours["gpu_peak_gib"], ref["gpu_peak_gib"]))
    if dec:
        rows.append(("greedy sentences/s", dec["ours_sentences_per_s"], dec["reference_sentences_per_s"]))
    lines = [f"size {args.size}, {args.device}, {args.dtype}: {cfg.num_layers} x {cfg.hidden_size}, vocab {cfg.vocab_size}; "
             f"{len(ours['step_s'])} timed steps after {args.warmup}; {ours['examples'] // len(ours['step_s'])} unrolled "
             f"examples per step ({args.rows} packed rows of {ROW_LENGTH} tokens for ours)",
             f"peak matmul {args.dtype}: jnp.dot {ours['peak_flops'] / 1e9:.1f} GFLOP/s, torch.mm "
             f"{ref['peak_flops'] / 1e9:.1f} GFLOP/s; load avg {ours['load_start']} .. {ref['load_end']}",
             "", f"| {'':34} | {'ours (JAX)':>12} | {'reference':>12} | {'ratio':>7} |",
             f"|{'-' * 36}|{'-' * 14}:|{'-' * 14}:|{'-' * 9}:|"]
    lines += [f"| {name:34} | {g(a):>12} | {g(b):>12} | {a / b:>7.2f} |" for name, a, b in rows]
    spent = f"reference {ref['executed_flops'] / ref['useful_flops']:.2f} (padding, head everywhere)"
    if "phases" in ours:  # XLA's count of the compiled step, per timed step
        spent += f", ours {ours['phases']['xla_step_flops'] * len(ours['step_s']) / ours['useful_flops']:.2f} (XLA's count)"
    lines.append(f"FLOPs executed per useful FLOP: {spent}")
    if "phases" in ours:
        lines.append(phase_line(ours, ref))
    if dec:
        lines.append(f"decode: {dec['sentences']} sentences, max_len {args.max_len}, ours batch "
                     f"{args.decode_batch}; {dec['same_output']}/{dec['sentences']} outputs identical")
    return "\n".join(lines)


def phase_line(ours: dict, ref: dict) -> str:
    """One step's time by phase (--phases): ours as forward, backward (forward + backward less
    the forward) and the rest of the step; the reference's parts as timed apart."""
    step = float(np.median(ours["step_s"]))
    fwd, fwd_bwd = ours["phases"]["forward"], ours["phases"]["forward_backward"]
    r = ref["phases"]
    return (f"step phases, s: ours forward {fwd:.3f}, backward {fwd_bwd - fwd:.3f}, rest (optimizer, "
            f"accumulation) {step - fwd_bwd:.3f}; reference forward {r['forward']:.3f}, backward "
            f"{r['backward']:.3f}, optimizer {r['optimizer']:.3f}")


def parse(argv=None):
    ap = argparse.ArgumentParser(description="Training and greedy decoding, ours (JAX) against the "
                                 "original's way (PyTorch), same workload and size; see the module docstring.")
    ap.add_argument("--size", default="base", choices=["micro", *workload.SIZES])
    ap.add_argument("--steps", type=int, help="timed training steps (default per size)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first (the compile)")
    ap.add_argument("--rows", type=int, help="our packed rows per step (default per size)")
    ap.add_argument("--decode-sentences", type=int, help="sentences decoded by each side")
    ap.add_argument("--decode-batch", type=int, help="our greedy batch (default 8 on a CPU, 64 on a GPU; "
                    "the reference's is 8)")
    ap.add_argument("--max-len", type=int, default=20, help="decode length cap")
    ap.add_argument("--skip-decode", action="store_true")
    ap.add_argument("--decode-only", action="store_true", help="only the greedy decoding comparison")
    ap.add_argument("--phases", action="store_true", help="also time forward / backward / optimizer apart")
    ap.add_argument("--peak-n", type=int, help="side of the peak-FLOP/s matmuls (default 2048 CPU, 8192 GPU)")
    ap.add_argument("--device", choices=["cpu", "gpu"], default="cpu", help="where both sides run")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="compute dtype of both sides (ours: ModelConfig.dtype; the reference: autocast)")
    ap.add_argument("--one-pass", action="store_true", help="add the one-pass objective's training side "
                    "and the cached decoder; every side trains the pairs of the one-pass steps")
    ap.add_argument("--one-pass-rows", type=int, help="one-pass rows per step (default per size)")
    ap.add_argument("--window", type=int, default=one_pass_sides.WINDOW,
                    help="pairs open at once in the one-pass pipeline (default: the config's data.window)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    ap.add_argument("--side-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    gpu = args.device == "gpu"
    if gpu and args.phases:
        ap.error("--phases times the CPU path only (its phase timers do not wait for the GPU)")
    if args.decode_only and (args.phases or args.skip_decode):
        ap.error("--decode-only runs no training (--phases) and only decoding (--skip-decode)")
    rows, steps, sentences = (GPU_DEFAULTS if gpu else DEFAULTS)[args.size]
    args.decode_batch = args.decode_batch or (64 if gpu else 8)
    args.peak_n = args.peak_n or (8192 if gpu else 2048)
    args.rows = args.rows or rows
    args.steps = args.steps or steps
    args.decode_sentences = args.decode_sentences or sentences
    args.one_pass_rows = args.one_pass_rows or (GPU_ONE_PASS_ROWS if gpu else ONE_PASS_ROWS)[args.size]
    return args


def main(argv=None):
    args = parse(argv)
    cfg = model_config(args.size, args.dtype)
    if args.side:
        with open(args.side_out, "w") as f:
            json.dump(SIDES[args.side](args, cfg), f)
        return
    passed = list(argv if argv is not None else sys.argv[1:])  # a side ignores --json
    when = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    if args.decode_only:
        dec = _run_side("decode", passed, args.device == "gpu")
        ratio = dec["ours_sentences_per_s"] / dec["reference_sentences_per_s"]
        print(f"size {args.size}, {args.device}, {args.dtype}: greedy sentences/s ours {dec['ours_sentences_per_s']:.1f} "
              f"(batch {args.decode_batch}), reference {dec['reference_sentences_per_s']:.1f} (batch 8), ratio "
              f"{ratio:.2f}; {dec['sentences']} sentences, max_len {args.max_len}; "
              f"{dec['same_output']}/{dec['sentences']} outputs identical")
        extra = {}
        if args.one_pass:
            extra = {"cached_decode_ratio": dec["cached_sentences_per_s"] / dec["reference_sentences_per_s"],
                     "cached_vs_unrolled_decode": dec["cached_sentences_per_s"] / dec["ours_sentences_per_s"]}
            print(f"cached (one-pass model) {dec['cached_sentences_per_s']:.1f} sentences/s: "
                  f"{extra['cached_decode_ratio']:.2f}x the reference, {extra['cached_vs_unrolled_decode']:.2f}x ours")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"decode_ratio": ratio, **extra, "date": when, "size": args.size, "device": args.device,
                           "dtype": args.dtype, "command": " ".join(sys.argv), "decode": dec}, f, indent=1)
        return
    gpu = args.device == "gpu"
    one = _run_side("one_pass", passed, gpu) if args.one_pass else None
    ours, ref = _run_side("jax", passed, gpu), _run_side("torch", passed, gpu)
    dec = ref.pop("decode", None)
    cmp = compare(ours, ref, dec)
    print(table(args, cfg, ours, ref, dec, cmp))
    if one:
        cmp.update(one_pass_sides.compare(one, ours, ref, dec))
        print(one_pass_sides.table(one, ours, ref, dec, cmp))
    if args.json:
        machine = f"{_cpu_name()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        if "gpu_peak_gib" in ours:
            machine = f"{ref['gpu_name']}; {machine}"
        result = {**cmp, "date": when, "size": args.size, "device": args.device, "dtype": args.dtype,
                  "command": " ".join(sys.argv), "machine": machine,
                  "ours": ours, "reference": ref, "decode": dec, "one_pass": one}
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
