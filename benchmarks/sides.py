"""The two sides of benchmarks/run.py and the workload they share: our JAX training step
(side_jax), the original's way in PyTorch (side_torch) and greedy decoding of both
(side_decode). run.py starts each in its own subprocess (`--side NAME`) and compares what
they return; the module docstring of run.py says what each measures and how. With
`--one-pass`, benchmarks/one_pass_sides.py adds a third training side and the cached decoder,
and decides which pairs the unrolled sides train (training_batches)."""

from __future__ import annotations

import dataclasses
import functools
import os
import resource
import time
import types

import numpy as np

from benchmarks import flops, workload
from bertgen_jax.data.pipeline import DEFAULT_BUDGETS, BatchIterator, Stream
from bertgen_jax.data.rows import RowSpec, real_token_fraction
from bertgen_jax.layout import KIND_REGION, KIND_TEXT
from bertgen_jax.model import ModelConfig

# The longest MT example is 206 tokens; a row never held more than 10 examples of this
# workload (so 12 [MASK] slots waste little head work); one image's regions per row.
ROW_LENGTH, ROW_TARGETS, ROW_REGIONS = 256, 12, 64
POOL_PAIRS = 2000
OPTIM = types.SimpleNamespace(fused=True, clip_norm=10.0, b1=0.9, b2=0.999, eps=1e-6, weight_decay=1e-4,
                              decay_norms_and_biases=True)  # = torch AdamW's defaults + the original's
LR = 1e-4


def _load() -> float:
    return round(os.getloadavg()[0], 2)


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


def training_batches(args, cfg):
    """The unrolled sides' host batches, the first args.warmup untimed, and their build seconds:
    args.warmup + args.steps of the pool's (host_batches), or with --one-pass those of the pairs
    the one-pass steps hold (one_pass_sides.unrolled_batches), however many they fill."""
    if getattr(args, "one_pass", False):
        from benchmarks import one_pass_sides
        return one_pass_sides.unrolled_batches(cfg, args.rows, args.one_pass_rows, args.warmup, args.steps, args.seed,
                                               args.window)
    return host_batches(cfg, args.rows, args.warmup + args.steps, args.seed)


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


def _summary(cfg, times, labels, lengths=None) -> dict:
    """Throughput of the timed steps, from each step's seconds, labels (of its label slots of
    weight > 0) and example lengths (None: no FLOPs, as for one-pass segments, which the
    one-target formula does not fit). Rates are the median over steps of each step's rate: the
    machine is shared, and one step slowed by another job should not move the figure. A
    prediction is a label slot (an unrolled example, or one query of a one-pass segment); a
    target token is one whose label is a wordpiece, not `[STOP]`."""
    from bertgen_jax import vocab
    n = {"examples": [len(x) for x in labels], "predictions": [len(x) for x in labels],
         "target_tokens": [int(np.sum(np.asarray(x) != vocab.STOP_ID)) for x in labels]}
    if lengths is not None:
        n["useful_flops"] = [flops.train_flops(cfg, x) for x in lengths]
    out = {"step_s": times, **{k: sum(v) for k, v in n.items()}}
    for k, v in n.items():
        out[f"{k}_per_s"] = float(np.median(np.asarray(v) / np.asarray(times)))
        out[f"{k}_per_s_overall"] = sum(v) / sum(times)
    return out


def _peak(measure, n: int, before: float) -> float:
    """The better of the peak measured before the steps and one measured after them."""
    return max(before, measure(n))


# -- the sides, each in its own process ---------------------------------------------------------

def timed_steps(cfg, batches, seed: int):
    """Train a fresh model of `cfg` one step per host batch, each waited for and timed:
    (seconds per step, Steps, params, opt_state, the last stats, mesh)."""
    import jax  # in the side's own process, after _jax_setup
    from flax import nnx

    from bertgen_jax import optim, sharding
    from bertgen_jax.model import BertGen
    from bertgen_jax.step import Steps
    lr = optim.schedule(LR, 1, 10 ** 6)
    mesh = sharding.make_mesh()
    steps = Steps(BertGen(cfg, nnx.Rngs(seed)), optim.make_optimizer(OPTIM, lr), lr, mesh, 1, seed)
    params, opt_state = steps.place()
    times, stats = [], None
    for i, host in enumerate(batches):
        t = time.perf_counter()
        stacked = {k: v[None] for k, v in host.items()}  # one micro-batch: [1, B, ...]
        params, opt_state, stats = steps.train(params, opt_state, sharding.global_batch(stacked, mesh, 1), i)
        jax.block_until_ready(stats)
        times.append(time.perf_counter() - t)
    return times, steps, params, opt_state, stats, mesh


def side_jax(args, cfg) -> dict:
    import jax
    _jax_setup(args)
    peak = functools.partial(flops.peak_jax, dtype=args.dtype)
    out = {"load_start": _load(), "peak_flops": peak(args.peak_n), "backend": jax.default_backend(),
           "jax": jax.__version__, "matmul_precision": str(jax.config.jax_default_matmul_precision)}
    batches, build_s = training_batches(args, cfg)
    times, steps, params, opt_state, stats, mesh = timed_steps(cfg, batches, args.seed)
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
    batches, _ = training_batches(args, cfg)
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
    from bertgen_jax.decode import greedy
    from bertgen_jax.model import BertGen
    _jax_setup(args)
    out = {"load_start": _load()}
    pairs, regions_of = workload.synthetic_pairs(args.decode_sentences, args.seed + 1, cfg.vocab_size,
                                                 feature_dim=cfg.feature_dim)
    regions_of = functools.lru_cache(maxsize=None)(regions_of)
    ours_model = BertGen(cfg, nnx.Rngs(args.seed))
    ref_model = T.TorchBertGen(cfg)
    T.load_from_jax(ref_model, ours_model)
    ref_model.to(_torch_setup(args))
    run_ours = lambda: greedy.greedy(ours_model, pairs, regions_of, max_len=args.max_len,
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
               ours_tokens=sum(len(x) for x in ours), reference_tokens=sum(len(x) for x in ref))
    if getattr(args, "one_pass", False):  # the cached decoder of a one-pass model, same pairs
        from benchmarks import one_pass_sides
        out.update(one_pass_sides.cached_decode(args, cfg, pairs, regions_of, ref))
    out["load_end"] = _load()
    return out


SIDES = {"jax": side_jax, "torch": side_torch, "decode": side_decode}
