"""The one-pass objective in benchmarks/run.py (`--one-pass`): its training side, the cached
decoder, and the workload that lets every side train on exactly the same pairs.

The workload is defined by pairs, not by batches. The one-pass steps come from the training
pipeline itself: a BatchIterator (objective "one_pass", `--window` pairs open, the config's
default 32) over one stream of the shared pool (sides.POOL_PAIRS), `--one-pass-rows` rows of 256
tokens, 72 target slots and 96 region slots a row. It records every pair it draws with its
flip, so the pairs each step completed are known (a one-pass pair is one segment, placed whole).
The pairs of the first `--warmup` steps warm up every side; the pairs of the next `--steps`
steps are the timed ones. The unrolled sides (ours, packed; the reference, unpacked from ours)
train the n+1 unrolled examples of those same pairs with the same flips, packed first fit
into steps of `--rows` rows of sides.ROW_LENGTH tokens (a step closing at the first example
that fits in none of its rows); their last step is partly filled. So every side makes the same
predictions (label slots of weight > 0: y_1..y_n and `[STOP]` of each pair) over its timed
steps, whatever their number.

The row: 256 tokens on both sides make a row cost the same; 96 region slots hold one or two
images' regions (up to 54 each here), as the one-pass default (configs/base.py). 72 target slots: a row
then holds about 58 targets; 96 slots would hold 2% more but make a base step about 9% slower
on a CPU (the vocabulary head runs at every slot, filled or not), 64 would hold 3% fewer.
Packing density is then about 0.91 with a window of 32 pairs, 0.86 with 1.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import numpy as np

from benchmarks import sides, workload
from bertgen_jax.data.one_pass import one_pass
from bertgen_jax.data.pipeline import DEFAULT_BUDGETS, BatchIterator, Stream
from bertgen_jax.data.rows import RowFiller, RowSpec, assemble_row, real_token_fraction, stack_rows
from bertgen_jax.data.unroll import unroll

ONE_PASS_ROW = (256, 72, 96)  # tokens, target slots, region slots of a one-pass row
WINDOW = 32  # pairs open at once in the one-pass pipeline: configs/base.py's data.window


def one_pass_config(cfg):
    return dataclasses.replace(cfg, objective="one_pass")


def _pool(cfg, seed: int):
    """The shared pool (as sides.host_batches draws from) and its cached regions."""
    pairs, regions_of = workload.synthetic_pairs(sides.POOL_PAIRS, seed, cfg.vocab_size,
                                                 feature_dim=cfg.feature_dim)
    return pairs, functools.lru_cache(maxsize=None)(regions_of)


class _Recording(BatchIterator):
    """The training pipeline's iterator, remembering each pair it draws as (pair index, flip)."""

    def __init__(self, *args, **kwargs):
        self.drawn: list[tuple[int, int]] = []
        super().__init__(*args, **kwargs)

    def _draw(self):
        s, i, t, flip = super()._draw()
        self.drawn.append((i, flip))
        return s, i, t, flip


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


def pair_workload(cfg, rows: int, warmup: int, steps: int, seed: int, window: int = WINDOW):
    """(one-pass batches (warm-up first), warm-up pairs, timed pairs, regions_of), each pair as
    (Pair, flip). The one-pass steps decide which pairs are timed; see the module docstring."""
    pairs, regions_of = _pool(cfg, seed)
    spec = RowSpec(*ONE_PASS_ROW, cfg.feature_dim, attention_rank=True)
    it = _Recording([Stream("synthetic", pairs)], regions_of, spec, rows, "packed", DEFAULT_BUDGETS,
                    seed=seed, window=window, objective="one_pass")
    batches, placed = [], []  # placed[k]: the (pair, flip) of the pairs step k completed
    done: set[tuple[int, int]] = set()
    for _ in range(warmup + steps):
        batches.append(next(it))
        state = it.get_state()
        if state["epochs"][0]:  # a second epoch would draw pairs again
            raise ValueError(f"{warmup + steps} one-pass steps of {rows} rows need more than the pool's "
                             f"{len(pairs)} pairs")
        still_open = {(o[1], o[3]) for o in state["open"] if o[0] >= 0}
        new = [d for d in it.drawn if d not in done and d not in still_open]
        done.update(new)
        placed.append([(pairs[i], bool(flip)) for i, flip in new])
    return batches, sum(placed[:warmup], []), sum(placed[warmup:], []), regions_of


def _unrolled(tagged) -> list:
    return [ex for p, f in tagged for ex in unroll(p, DEFAULT_BUDGETS[p.task], flip=f)]


def unrolled_batches(cfg, rows: int, one_pass_rows: int, warmup: int, steps: int, seed: int,
                     window: int = WINDOW):
    """The unrolled sides' packed batches (`warmup` from the warm-up pairs, then every batch of
    the timed pairs' examples) and the seconds it took to build them."""
    _, warm, timed, regions_of = pair_workload(cfg, one_pass_rows, warmup, steps, seed, window)
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
           "row": dict(zip(("length", "targets", "regions"), ONE_PASS_ROW)), "rows": args.one_pass_rows,
           "window": args.window}
    start = time.perf_counter()
    batches, _, timed_pairs, _ = pair_workload(cfg, args.one_pass_rows, args.warmup, args.steps, args.seed,
                                                  args.window)
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
             f"without [STOP]) on every side; timed steps one-pass {len(one['step_s'])} x {one['rows']} rows "
             f"(window {one.get('window', 1)}), unrolled {len(ours['step_s'])}, reference {len(ref['step_s'])}",
             "", f"| {'':34} | {'one-pass':>10} | {'unrolled':>10} | {'reference':>10} "
             f"| {'1p/ref':>7} | {'1p/unr':>7} |",
             f"|{'-' * 36}|{'-' * 12}:|{'-' * 12}:|{'-' * 12}:|{'-' * 9}:|{'-' * 9}:|"]
    lines += [f"| {name:34} | {g(a):>10} | {g(b):>10} | {g(c):>10} | {a / c:>7.2f} | {a / b:>7.2f} |"
              for name, a, b, c in rows]
    if dec and "cached_sentences_per_s" in dec:
        lines.append(f"cached decoder: {dec['cached_tokens']} tokens, {dec['cached_same_as_reference']}/"
                     f"{dec['sentences']} outputs as the reference's (a different layout: need not match)")
    return "\n".join(lines)
