"""The one-pass objective in benchmarks/run.py (`--one-pass`): its training side, the cached
decoder, and the workload that lets every side train on exactly the same pairs.

The workload is defined by pairs, not by batches. Pairs of the shared pool (sides.POOL_PAIRS,
in pool order, each with a fixed flip) are packed as one-pass segments (data/one_pass.py) into
steps of `--one-pass-rows` rows of 256 tokens, 96 target slots and 128 region slots, first fit,
a step closing at the first segment that fits in none of its rows (BatchIterator's rule with
window 1, through the same RowFiller and assemble_row). The pairs of the first `--warmup` steps
warm up every side; the pairs of the next `--steps` steps are the timed ones. The unrolled sides
(ours, packed; the reference, unpacked from ours) train the n+1 unrolled examples of those same
pairs, packed the same way into steps of `--rows` rows of sides.ROW_LENGTH tokens; their last
step is partly filled. So every side makes the same predictions (label slots of weight > 0:
y_1..y_n and `[STOP]` of each pair) over its timed steps, whatever their number.

Rows of 256 tokens on both sides make a row cost the same; 128 region slots hold about three
visual segments (one image each, up to 54 regions here); 96 target slots are never the limit
(a row of 256 tokens holds about 60 targets). Packing density then 0.85-0.89 per step.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import numpy as np

from benchmarks import sides, workload
from bertgen_jax.data.one_pass import one_pass
from bertgen_jax.data.pipeline import DEFAULT_BUDGETS
from bertgen_jax.data.rows import RowFiller, RowSpec, assemble_row, real_token_fraction, stack_rows
from bertgen_jax.data.unroll import unroll

ONE_PASS_ROW = (256, 96, 128)  # tokens, target slots, region slots of a one-pass row


def one_pass_config(cfg):
    return dataclasses.replace(cfg, objective="one_pass")


def _pool(cfg, seed: int):
    """The shared pool (as sides.host_batches draws from), its regions and one flip per pair."""
    pairs, regions_of = workload.synthetic_pairs(sides.POOL_PAIRS, seed, cfg.vocab_size,
                                                 feature_dim=cfg.feature_dim)
    rng = np.random.default_rng([seed, 11])
    flips = [bool(rng.random() < 0.5) and p.task != "mt" for p in pairs]  # MT has no image to mirror
    return pairs, functools.lru_cache(maxsize=None)(regions_of), flips


def _batch(filler: RowFiller, spec: RowSpec, regions_of) -> dict:
    batch = stack_rows([assemble_row([ex for ex, _ in members], spec, regions_of) for members in filler.members])
    # One stream: slot taken -> 0, empty -> -1, as BatchIterator marks them.
    batch["stream_ids"] = np.where(batch["label_weights"] > 0, 0, -1).astype(np.int32)
    return batch


def fill(items, spec: RowSpec, rows: int, regions_of):
    """Yield (batch of `rows` rows, items in it): items in order, first fit, a batch closing at
    the first item that fits in none of its rows; the last, partly filled batch too."""
    filler, count = RowFiller(spec, rows, "packed"), 0
    for item in items:
        if not filler.add(item, 0):
            yield _batch(filler, spec, regions_of), count
            filler, count = RowFiller(spec, rows, "packed"), 0
            if not filler.add(item, 0):
                raise ValueError(f"an example of {len(item)} tokens does not fit an empty row of {spec}")
        count += 1
    if count:
        yield _batch(filler, spec, regions_of), count


def pair_workload(cfg, rows: int, warmup: int, steps: int, seed: int):
    """(one-pass batches (warm-up first), warm-up pairs, timed pairs, regions_of), each pair as
    (Pair, flip). The one-pass steps decide which pairs are timed; see the module docstring."""
    pairs, regions_of, flips = _pool(cfg, seed)
    spec = RowSpec(*ONE_PASS_ROW, cfg.feature_dim, attention_rank=True)
    segments = (one_pass(p, DEFAULT_BUDGETS[p.task], flip=f) for p, f in zip(pairs, flips))
    batches, counts = [], []
    for batch, count in fill(segments, spec, rows, regions_of):
        if len(batches) == warmup + steps:
            break
        batches.append(batch)
        counts.append(count)
    if len(batches) < warmup + steps or sum(counts) == len(pairs):  # the pool ran out: last step partial
        raise ValueError(f"{warmup + steps} one-pass steps of {rows} rows need more than the pool's {len(pairs)} pairs")
    cut, end = sum(counts[:warmup]), sum(counts)
    tagged = list(zip(pairs, flips))
    return batches, tagged[:cut], tagged[cut:end], regions_of


def _unrolled(tagged) -> list:
    return [ex for p, f in tagged for ex in unroll(p, DEFAULT_BUDGETS[p.task], flip=f)]


def unrolled_batches(cfg, rows: int, one_pass_rows: int, warmup: int, steps: int, seed: int):
    """The unrolled sides' packed batches (`warmup` from the warm-up pairs, then every batch of
    the timed pairs' examples) and the seconds it took to build them."""
    _, warm, timed, regions_of = pair_workload(cfg, one_pass_rows, warmup, steps, seed)
    start = time.perf_counter()
    spec = RowSpec(sides.ROW_LENGTH, sides.ROW_TARGETS, sides.ROW_REGIONS, cfg.feature_dim)
    first = [b for b, _ in fill(_unrolled(warm), spec, rows, regions_of)]
    first = (first * warmup)[:warmup]  # repeated should the warm-up pairs fill fewer batches
    batches = first + [b for b, _ in fill(_unrolled(timed), spec, rows, regions_of)]
    return batches, time.perf_counter() - start


def segment_lengths(batch) -> list[int]:
    """Tokens of each segment of a packed batch (segment ids 1.. in each row)."""
    return [int(n) for row in batch["segment_ids"] for n in np.bincount(row)[1:] if n]


# -- the one-pass training side, in its own process -------------------------------------------

def side_one_pass(args, cfg) -> dict:
    import jax
    sides._jax_setup(args)
    out = {"load_start": sides._load(), "backend": jax.default_backend(),
           "row": dict(zip(("length", "targets", "regions"), ONE_PASS_ROW)), "rows": args.one_pass_rows}
    start = time.perf_counter()
    batches, _, timed_pairs, _ = pair_workload(cfg, args.one_pass_rows, args.warmup, args.steps, args.seed)
    build_s = time.perf_counter() - start
    times, steps, params, opt_state, stats, mesh = sides.timed_steps(one_pass_config(cfg), batches, args.seed)
    out["first_step_s"] = times[0]  # compile + run
    timed = batches[args.warmup:]
    labels = [b["labels"][b["label_weights"] > 0] for b in timed]
    out.update(sides._summary(cfg, times[args.warmup:], labels))
    out.update(pairs=len(timed_pairs), segment_tokens=sum(sum(segment_lengths(b)) for b in timed),
               real_token_fraction=float(np.mean([real_token_fraction(b) for b in timed])),
               build_s_per_step=build_s / len(batches), compiles=steps.traces["train"],
               loss=float(stats["loss"]), maxrss_gib=sides._maxrss_gib())
    if args.device == "gpu":
        out["gpu_peak_gib"] = sides._jax_gpu_peak_gib()
    out["load_end"] = sides._load()
    return out


def cached_decode(args, cfg, pairs, regions_of, reference_outputs) -> dict:
    """The cached decoder of a one-pass model (decode/cached.py) on the decode side's pairs,
    timed on its second run (the first compiles). Its weights are the unrolled model's (same
    seed, same initialisation); its layout is the one-pass one, so outputs need not match the
    reference's."""
    from flax import nnx

    from bertgen_jax.decode import cached
    from bertgen_jax.model import BertGen
    model = BertGen(one_pass_config(cfg), nnx.Rngs(args.seed))
    run = lambda: cached.greedy(model, pairs, regions_of, max_len=args.max_len, batch_size=args.decode_batch,
                                budget=DEFAULT_BUDGETS)
    out = {"cached_first_s": sides._timed(run)}
    start = time.perf_counter()
    got = run()
    out["cached_s"] = time.perf_counter() - start
    out.update(cached_sentences_per_s=len(pairs) / out["cached_s"], cached_tokens=sum(len(x) for x in got),
               cached_same_as_reference=sum(np.array_equal(a, b) for a, b in zip(got, reference_outputs)))
    return out


# -- comparing and printing, in run.py's parent process ---------------------------------------

def compare(one: dict, ours: dict, ref: dict, dec: dict | None) -> dict:
    """The one-pass ratios. Rates are medians of per-step rates (as run.py's); `_overall` ones
    are all timed predictions over all timed seconds, the same work on every side."""
    for key in ("predictions", "target_tokens"):
        if not one[key] == ours[key] == ref[key]:
            raise AssertionError(f"the sides trained different pairs: {key} {one[key]} / {ours[key]} / {ref[key]}")
    rate = lambda side, how="": side[f"predictions_per_s{how}"]
    out = {"one_pass_train_ratio": rate(one) / rate(ref), "one_pass_vs_unrolled": rate(one) / rate(ours),
           "one_pass_train_ratio_overall": rate(one, "_overall") / rate(ref, "_overall"),
           "one_pass_vs_unrolled_overall": rate(one, "_overall") / rate(ours, "_overall"),
           "one_pass_memory_ratio": one["maxrss_gib"] / ref["maxrss_gib"],
           "cached_decode_ratio": None, "cached_vs_unrolled_decode": None}
    if "gpu_peak_gib" in one:
        out["one_pass_memory_ratio"] = one["gpu_peak_gib"] / ref["gpu_peak_gib"]
    if dec and "cached_sentences_per_s" in dec:
        out["cached_decode_ratio"] = dec["cached_sentences_per_s"] / dec["reference_sentences_per_s"]
        out["cached_vs_unrolled_decode"] = dec["cached_sentences_per_s"] / dec["ours_sentences_per_s"]
    return out


def table(one: dict, ours: dict, ref: dict, dec: dict | None, cmp: dict) -> str:
    g = lambda x: f"{x:,.1f}" if x >= 10 else f"{x:.3g}"
    med = lambda s: float(np.median(s["step_s"]))
    rows = [("predictions/s (median of steps)", *(s["predictions_per_s"] for s in (one, ours, ref))),
            ("predictions/s (all timed steps)", *(s["predictions_per_s_overall"] for s in (one, ours, ref))),
            ("target tokens/s (no [STOP])", *(s["target_tokens_per_s"] for s in (one, ours, ref))),
            ("real-token fraction", *(s["real_token_fraction"] for s in (one, ours, ref))),
            ("peak RSS GiB (training process)", *(s["maxrss_gib"] for s in (one, ours, ref))),
            ("step s (median of timed)", med(one), med(ours), med(ref))]
    if dec and "cached_sentences_per_s" in dec:
        rows.append(("greedy sentences/s", dec["cached_sentences_per_s"], dec["ours_sentences_per_s"],
                     dec["reference_sentences_per_s"]))
    lines = [f"one-pass: {one['pairs']} timed pairs, {one['predictions']} predictions ({one['target_tokens']} "
             f"without [STOP]) on every side; timed steps one-pass {len(one['step_s'])} x {one['rows']} rows, "
             f"unrolled {len(ours['step_s'])}, reference {len(ref['step_s'])}",
             "", f"| {'':34} | {'one-pass':>10} | {'unrolled':>10} | {'reference':>10} "
             f"| {'1p/ref':>7} | {'1p/unr':>7} |",
             f"|{'-' * 36}|{'-' * 12}:|{'-' * 12}:|{'-' * 12}:|{'-' * 9}:|{'-' * 9}:|"]
    lines += [f"| {name:34} | {g(a):>10} | {g(b):>10} | {g(c):>10} | {a / c:>7.2f} | {a / b:>7.2f} |"
              for name, a, b, c in rows]
    if dec and "cached_sentences_per_s" in dec:
        lines.append(f"cached decoder: {dec['cached_tokens']} tokens, {dec['cached_same_as_reference']}/"
                     f"{dec['sentences']} outputs as the reference's (a different layout: need not match)")
    return "\n".join(lines)
