"""Ours (JAX, packed rows, head at `[MASK]` only) against the original's way of computing
(benchmarks/torch_reference.py) on the same synthetic workload and model size, in one command:

    python benchmarks/run.py --size base [--steps N] [--decode-sentences N] [--json PATH] [--phases]
    python benchmarks/run.py --size base --device gpu [--dtype bfloat16] --json PATH

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
decode.greedy (while_loop over bucketed buffers, head at `[MASK]`), timed on its second run
(the first compiles); the reference is greedy_original (8 at a time, the tensor rebuilt one
token longer each step, head everywhere). Random weights never emit `[STOP]`, so every
sentence runs to `--max-len` (default 20, about the workload's mean target length).

Each side runs in its own subprocess, one after the other, so peak RSS (ru_maxrss) is its own
(the decode runs after the reference's RSS is read). MFU = useful FLOPs/s (flops.py) / the
machine's peak: the best of `--peak-n`^3 jnp.dot and torch.mm in `--dtype` (2048 on a CPU,
8192 on a GPU) timed in the same run. The machine
is shared: the load average at the start and end of each side goes with its figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # `python benchmarks/run.py` puts benchmarks/, not the repo, on the path
    sys.path.insert(0, REPO)

import numpy as np  # noqa: E402

from benchmarks import flops, workload  # noqa: E402
from bertgen_jax.data.pipeline import DEFAULT_BUDGETS, BatchIterator, Stream  # noqa: E402
from bertgen_jax.data.rows import RowSpec, real_token_fraction  # noqa: E402
from bertgen_jax.model import KIND_REGION, KIND_TEXT, ModelConfig  # noqa: E402

# A test-only size: small enough for an end-to-end run in seconds.
MICRO = ModelConfig(vocab_size=500, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                    feature_dim=16, box_frequencies=4)
# Per size: rows per step, timed steps, sentences decoded. Base keeps the reference's steps at
# tens of seconds each (full 119,547-way head over every padded position) on 2 cores.
DEFAULTS = {"micro": (2, 2, 8), "tiny": (8, 10, 32), "small": (8, 5, 16), "base": (4, 3, 8)}
# On a GPU: enough rows that a step is not all launch overhead; base at 32 rows (~150 examples)
# keeps the reference's full-vocabulary logits and their gradients (~200 positions each) in memory.
GPU_DEFAULTS = {"micro": (2, 2, 8), "tiny": (64, 20, 512), "small": (64, 20, 512), "base": (32, 10, 256)}
# The longest MT example is 206 tokens; a row never held more than 10 examples of this
# workload (so 12 [MASK] slots waste little head work); one image's regions per row.
ROW_LENGTH, ROW_TARGETS, ROW_REGIONS = 256, 12, 64
POOL_PAIRS = 2000
OPTIM = types.SimpleNamespace(fused=True, clip_norm=10.0, b1=0.9, b2=0.999, eps=1e-6, weight_decay=1e-4,
                              decay_norms_and_biases=True)  # = torch AdamW's defaults + the original's
LR = 1e-4


def model_config(name: str, dtype: str = "float32") -> ModelConfig:
    return dataclasses.replace(MICRO if name == "micro" else workload.size(name), dtype=dtype)


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _maxrss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def _jax_gpu_peak_gib() -> float:
    import jax
    return jax.local_devices()[0].memory_stats()["peak_bytes_in_use"] / 2 ** 30


def _jax_setup(args) -> None:
    """On a GPU: check JAX is on it, and set its float32 matmul precision to torch's there."""
    import jax
    if args.device == "gpu":
        if jax.default_backend() != "gpu":
            raise SystemExit(f"--device gpu, but JAX's backend is {jax.default_backend()!r} (no CUDA plugin?)")
        jax.config.update("jax_default_matmul_precision", "tensorfloat32")  # = torch's "high"


def _torch_setup(args):
    """torch's device, and its matmul precision set to match JAX's on that device."""
    import torch
    if args.device == "gpu":
        torch.set_float32_matmul_precision("high")  # TF32, as JAX's default precision there
        return "cuda"
    return "cpu"


def _autocast_dtype(args):
    import torch
    return torch.bfloat16 if args.dtype == "bfloat16" else None


# -- the shared workload ----------------------------------------------------------------------

def host_batches(cfg: ModelConfig, rows: int, count: int, seed: int):
    """`count` packed host batches of the workload (deterministic in seed) and the seconds it
    took to build them."""
    pairs, regions_of = workload.synthetic_pairs(POOL_PAIRS, seed, cfg.vocab_size, feature_dim=cfg.feature_dim)
    regions_of = functools.lru_cache(maxsize=None)(regions_of)
    spec = RowSpec(ROW_LENGTH, ROW_TARGETS, ROW_REGIONS, cfg.feature_dim)
    it = BatchIterator([Stream("synthetic", pairs)], regions_of, spec, rows, "packed", DEFAULT_BUDGETS, seed=seed)
    start = time.perf_counter()
    batches = [next(it) for _ in range(count)]
    return batches, time.perf_counter() - start


def example_lengths(batch) -> list[int]:
    """Present tokens of each example of a packed batch, in (row, target slot) order."""
    out = []
    for r in range(batch["segment_ids"].shape[0]):
        counts = np.bincount(batch["segment_ids"][r], minlength=ROW_TARGETS + 1)
        out += [int(counts[p + 1]) for p in np.flatnonzero(batch["label_weights"][r])]
    return out


def unpack(batch) -> list[tuple]:
    """The examples of a packed batch, in (row, slot) order, as (the reference's Row, its own
    regions (boxes, features, image_wh), already mirrored; None without)."""
    from benchmarks.torch_reference import Row
    out = []
    for r in range(batch["segment_ids"].shape[0]):
        for p in np.flatnonzero(batch["label_weights"][r]):
            on = np.flatnonzero(batch["segment_ids"][r] == p + 1)  # segment p + 1 fills slot p
            kind = batch["token_kind"][r, on]
            n, regions = int(np.sum(kind == KIND_REGION)), None
            if n:
                first = int(batch["region_index"][r, on[kind == KIND_REGION][0]])
                regions = (batch["region_boxes"][r, first:first + n],
                           batch["region_features"][r, first:first + n], batch["region_image_wh"][r, first])
            out.append((Row(batch["token_ids"][r, on[kind == KIND_TEXT]].astype(np.int64), -1, n, False,
                            int(batch["mask_positions"][r, p]) - int(on[0]), int(batch["labels"][r, p])),
                        regions))
    return out


def original_batch(step: list[tuple], feature_dim: int, device=None):
    """The reference's batch of unpacked examples: one per row, padded to the longest."""
    from benchmarks import torch_reference as T
    rows = [dataclasses.replace(row, image=i) for i, (row, _) in enumerate(step)]
    return T.original_batch(rows, lambda i: step[i][1], feature_dim, device)


def _summary(cfg, times, labels, lengths) -> dict:
    """Throughput of the timed steps, from each step's seconds, labels (of its examples) and
    example lengths. Rates are the median over steps of each step's rate: the machine is
    shared, and one step slowed by another job should not move the figure. A target token is
    an example whose label is a wordpiece, not `[STOP]`."""
    from bertgen_jax import vocab
    n = {"examples": [len(x) for x in labels],
         "target_tokens": [int(np.sum(np.asarray(x) != vocab.STOP_ID)) for x in labels],
         "useful_flops": [flops.train_flops(cfg, x) for x in lengths]}
    out = {"step_s": times, **{k: sum(v) for k, v in n.items()}}
    for k, v in n.items():
        out[f"{k}_per_s"] = float(np.median(np.asarray(v) / np.asarray(times)))
        out[f"{k}_per_s_overall"] = sum(v) / sum(times)
    return out


def _peak(measure, n: int, before: float) -> float:
    """The better of the peak measured before the steps and one measured after them."""
    return max(before, measure(n))


# -- the sides, each in its own process ---------------------------------------------------------

def side_jax(args, cfg) -> dict:
    import jax
    from flax import nnx

    from bertgen_jax import optim, sharding
    from bertgen_jax.model import BertGen
    from bertgen_jax.step import Steps
    _jax_setup(args)
    peak = functools.partial(flops.peak_jax, dtype=args.dtype)
    out = {"load_start": _load(), "peak_flops": peak(args.peak_n), "backend": jax.default_backend(),
           "jax": jax.__version__, "matmul_precision": str(jax.config.jax_default_matmul_precision)}
    batches, build_s = host_batches(cfg, args.rows, args.warmup + args.steps, args.seed)
    lr = optim.schedule(LR, 1, 10 ** 6)
    mesh = sharding.make_mesh()
    steps = Steps(BertGen(cfg, nnx.Rngs(args.seed)), optim.make_optimizer(OPTIM, lr), lr, mesh, 1, args.seed)
    params, opt_state = steps.place()
    times = []
    for i, host in enumerate(batches):
        t = time.perf_counter()
        stacked = {k: v[None] for k, v in host.items()}  # one micro-batch: [1, B, ...]
        params, opt_state, stats = steps.train(params, opt_state, sharding.global_batch(stacked, mesh, 1), i)
        jax.block_until_ready(stats)
        times.append(time.perf_counter() - t)
        if i == 0:
            out["first_step_s"] = times[0]  # compile + run
    timed = batches[args.warmup:]
    labels = [b["labels"][b["label_weights"] > 0] for b in timed]
    out.update(_summary(cfg, times[args.warmup:], labels, [example_lengths(b) for b in timed]))
    out.update(real_token_fraction=float(np.mean([real_token_fraction(b) for b in timed])),
               build_s_per_step=build_s / len(batches), compiles=steps.traces["train"],
               loss=float(stats["loss"]), maxrss_gib=_maxrss_gib(),
               peak_flops=_peak(peak, args.peak_n, out["peak_flops"]))
    if args.device == "gpu":
        out["gpu_peak_gib"] = _jax_gpu_peak_gib()
    if args.phases:
        out["phases"] = flops.jax_phases(steps, params, opt_state, timed[0], mesh)
    out["load_end"] = _load()
    return out


def shuffled_steps(steps: list[list], seed: int) -> list[list]:
    """The same examples in the same step sizes, in a random order across the steps: the
    original samples each example independently, so its batches mix long and short examples;
    handing it our steps as they are would give it our pipeline's grouping of one pair's
    prefixes (alike in length) for free."""
    pool = [x for step in steps for x in step]
    order = np.random.default_rng([seed, 7]).permutation(len(pool))
    cuts = np.cumsum([len(step) for step in steps])[:-1]
    return [[pool[i] for i in part] for part in np.split(order, cuts)]


def side_torch(args, cfg) -> dict:
    import torch

    from benchmarks import torch_reference as T
    torch.manual_seed(args.seed)
    device, autocast = _torch_setup(args), _autocast_dtype(args)
    peak = functools.partial(flops.peak_torch, dtype=args.dtype, device=device)
    out = {"load_start": _load(), "peak_flops": peak(args.peak_n), "threads": torch.get_num_threads(),
           "torch": torch.__version__}
    batches, _ = host_batches(cfg, args.rows, args.warmup + args.steps, args.seed)
    start = time.perf_counter()
    steps = [unpack(b) for b in batches]
    in_order = [[len(r.text) + r.num_regions + 1 for r, _ in step] for step in steps[args.warmup:]]
    steps = steps[:args.warmup] + shuffled_steps(steps[args.warmup:], args.seed)
    originals = [original_batch(step, cfg.feature_dim, device) for step in steps]
    out["build_s_per_step"] = (time.perf_counter() - start) / len(batches)  # + our build, not counted
    model = T.TorchBertGen(cfg).to(device)
    opt = T.make_optimizer(model, LR)
    out["fused_adamw"] = bool(opt.defaults.get("fused"))
    times = []
    for batch in originals:
        t = time.perf_counter()
        loss = T.train_step(model, opt, batch, autocast_dtype=autocast).item()  # .item() waits
        times.append(time.perf_counter() - t)
    timed = slice(args.warmup, None)
    out.update(_summary(cfg, times[timed], [b["labels"].tolist() for b in originals[timed]],
                        [b["valid"].sum(1).tolist() for b in originals[timed]]))
    out.update(real_token_fraction=float(np.mean([b["valid"].float().mean().item() for b in originals[timed]])),
               # what it would be on our steps as they are (one pair's prefixes together)
               real_token_fraction_unshuffled=float(np.mean([sum(x) / (len(x) * max(x)) for x in in_order])),
               padded_length=[int(b["valid"].shape[1]) for b in originals[timed]],
               executed_flops=sum(flops.padded_step_flops(cfg, *b["valid"].shape) for b in originals[timed]),
               loss=loss, maxrss_gib=_maxrss_gib(),
               peak_flops=_peak(peak, args.peak_n, out["peak_flops"]))
    if device == "cuda":
        # All its batches sit on the GPU before timing; a training run would hold one at a time.
        held = [sum(t.nbytes for t in b.values()) for b in originals]
        out["gpu_batches_gib"] = sum(held) / 2 ** 30
        out["gpu_peak_gib"] = (torch.cuda.max_memory_allocated() - sum(held) + max(held)) / 2 ** 30
        out["gpu_name"] = torch.cuda.get_device_name()
    if args.phases:
        out["phases"] = flops.torch_phases(model, opt, originals[args.warmup])
    del model, opt, originals
    if device == "cuda":
        torch.cuda.empty_cache()  # give the decode side's JAX the memory torch's cache holds
    if not args.skip_decode:  # after maxrss is read: the decode side holds both models
        out["decode"] = side_decode(args, cfg)
    out["load_end"] = _load()
    return out


def side_decode(args, cfg) -> dict:
    from flax import nnx

    from benchmarks import torch_reference as T
    from bertgen_jax import decode
    from bertgen_jax.model import BertGen
    _jax_setup(args)
    out = {}
    pairs, regions_of = workload.synthetic_pairs(args.decode_sentences, args.seed + 1, cfg.vocab_size,
                                                 feature_dim=cfg.feature_dim)
    regions_of = functools.lru_cache(maxsize=None)(regions_of)
    ours_model = BertGen(cfg, nnx.Rngs(args.seed))
    ref_model = T.TorchBertGen(cfg)
    T.load_from_jax(ref_model, ours_model)
    ref_model.to(_torch_setup(args))
    run_ours = lambda: decode.greedy(ours_model, pairs, regions_of, max_len=args.max_len,
                                     batch_size=args.decode_batch, budget=DEFAULT_BUDGETS)
    out["ours_first_s"] = _timed(run_ours)  # compiles every stage shape these pairs need
    start = time.perf_counter()
    ours = run_ours()
    out["ours_s"] = time.perf_counter() - start
    autocast = _autocast_dtype(args)
    T.greedy_original(ref_model, pairs[:1], regions_of, max_len=1, autocast_dtype=autocast)  # first-call allocations
    start = time.perf_counter()
    ref = T.greedy_original(ref_model, pairs, regions_of, max_len=args.max_len, batch_size=8,
                            autocast_dtype=autocast)
    out["reference_s"] = time.perf_counter() - start
    n = len(pairs)
    out.update(ours_sentences_per_s=n / out["ours_s"], reference_sentences_per_s=n / out["reference_s"],
               sentences=n, same_output=sum(np.array_equal(a, b) for a, b in zip(ours, ref)),
               ours_tokens=sum(len(x) for x in ours))
    return out


SIDES = {"jax": side_jax, "torch": side_torch, "decode": side_decode}


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
             f"{args.steps} timed steps after {args.warmup}; {ours['examples'] // args.steps} unrolled "
             f"examples per step ({args.rows} packed rows of {ROW_LENGTH} tokens for ours)",
             f"peak matmul {args.dtype}: jnp.dot {ours['peak_flops'] / 1e9:.1f} GFLOP/s, torch.mm "
             f"{ref['peak_flops'] / 1e9:.1f} GFLOP/s; load avg {ours['load_start']} .. {ref['load_end']}",
             "", f"| {'':34} | {'ours (JAX)':>12} | {'reference':>12} | {'ratio':>7} |",
             f"|{'-' * 36}|{'-' * 14}:|{'-' * 14}:|{'-' * 9}:|"]
    lines += [f"| {name:34} | {g(a):>12} | {g(b):>12} | {a / b:>7.2f} |" for name, a, b in rows]
    spent = f"reference {ref['executed_flops'] / ref['useful_flops']:.2f} (padding, head everywhere)"
    if "phases" in ours:  # XLA's count of the compiled step, per timed step
        spent += f", ours {ours['phases']['xla_step_flops'] * args.steps / ours['useful_flops']:.2f} (XLA's count)"
    lines.append(f"FLOPs executed per useful FLOP: {spent}")
    if dec:
        lines.append(f"decode: {dec['sentences']} sentences, max_len {args.max_len}, ours batch "
                     f"{args.decode_batch}; {dec['same_output']}/{dec['sentences']} outputs identical")
    return "\n".join(lines)


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
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"decode_ratio": ratio, "date": when, "size": args.size, "device": args.device,
                           "dtype": args.dtype, "command": " ".join(sys.argv), "decode": dec}, f, indent=1)
        return
    gpu = args.device == "gpu"
    ours, ref = _run_side("jax", passed, gpu), _run_side("torch", passed, gpu)
    dec = ref.pop("decode", None)
    cmp = compare(ours, ref, dec)
    print(table(args, cfg, ours, ref, dec, cmp))
    if args.json:
        machine = f"{_cpu_name()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        if "gpu_peak_gib" in ours:
            machine = f"{ref['gpu_name']}; {machine}"
        result = {**cmp, "date": when, "size": args.size, "device": args.device, "dtype": args.dtype,
                  "command": " ".join(sys.argv), "machine": machine,
                  "ours": ours, "reference": ref, "decode": dec}
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
