"""Multitask mixing: task streams of tokenized pairs -> fixed-shape host batches, resumable.

The mixing unit is a pair and its n+1 unrolled prefixes, which come in prefix order (with
objective "one_pass", a pair is one segment holding all n+1 targets: data/one_pass.py). A
window of W pairs is open at a time; each batch is built from scratch by taking the next
prefix of each open pair in turn (round robin) and placing it into the batch's rows, first
fit; a pair whose prefixes are all placed makes room for a newly drawn one. An example that
fits nowhere stays for the next batch, and the batch ends once W examples in a row did not
fit. With W = 1 a pair's prefixes travel together (in a packed row they share its region
slots); a wider window spreads each batch over about W different pairs, nearer the original,
which samples unrolled examples independently, and makes gradients far less correlated.

Which stream gives the next pair is decided by virtual time, not by a weighted coin: the
stream whose unrolled-example count divided by its weight is smallest goes next. The share of
unrolled examples drawn from each stream then matches the weights to within one pair's length
at any moment, and the share emitted to within the W open pairs (equal by default, like the original's one example per stream per step). A coin with
probability weight / mean unrolled length has the right expectation, but a stream of long
targets is drawn rarely, so its share wanders: with weights 0.5/0.3/0.2 and targets of 1-3,
8-12 and 20-30 wordpieces, some stream is off by more than 2% after 10,000 examples for about
a third of seeds.

Randomness is counter-based (the pair order of each stream's epoch, each pair's flip), so the
state is a handful of ints and restoring it continues with bit-identical batches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import grain
import grain.experimental
import numpy as np

from bertgen_jax.data.one_pass import OBJECTIVES, one_pass
from bertgen_jax.data.records import Regions
from bertgen_jax.data.rows import MODES, RowFiller, RowSpec, assemble_row, stack_rows
from bertgen_jax.data.unroll import Example, Pair, fitted_head, unroll

# Sequence budgets of the original: text + boxes for visual tasks, text alone for MT.
DEFAULT_BUDGETS = {"ic": 64, "mmt": 64, "mt": 512}
STATE_VERSION = 2
EMPTY_PLACE = [-1, -1, -1, -1]
# Domain tags keep the flip and permutation seed sequences apart.
_FLIP, _PERMUTATION = 0, 1


@dataclasses.dataclass(frozen=True)
class Stream:
    """One task stream (task, direction, dataset) of tokenized pairs."""
    name: str
    pairs: Sequence[Pair]
    weight: float = 1.0


def regions_reader(source) -> Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """`assemble_row`'s regions_of from a FeatureStore, a mapping or a function of the image
    index; either may give `Regions` or (boxes, features, image_wh) with the whole image first."""
    if source is None:
        def no_regions(image):
            raise ValueError(f"a visual pair asks for image {image} but the batch iterator was "
                             "given no region source: pass a FeatureStore")
        return no_regions
    get = source if callable(source) else source.__getitem__

    def regions_of(image):
        found = get(image)
        if isinstance(found, Regions):
            return found.boxes, found.features, np.array([found.image_w, found.image_h], np.float32)
        return found
    return regions_of


def first_misfit(streams: Sequence[Stream], spec: RowSpec, budget_for, objective: str = "unrolled") -> str | None:
    """Where the first pair whose longest example (unrolled) or segment (one_pass) does not fit
    a row of `spec` is, and what it needs; None when all fit. Checked before a run writes
    anything, so that a row too small is a config error, not a failure at the first batch."""
    budget_for = budget_for.__getitem__ if isinstance(budget_for, Mapping) else budget_for
    for s in streams:
        for i, pair in enumerate(s.pairs):
            head, regions = fitted_head(pair, budget_for(pair.task))
            n = len(pair.tgt_ids)
            if objective == "one_pass":  # context, n content tokens, n+1 queries
                tokens, targets = len(head) + regions + 1 + 2 * n + 1, n + 1
            else:  # the full prefix, [MASK] [SEP], regions, [END]
                tokens, targets = len(head) + n + 2 + regions + 1, 1
            if tokens > spec.length or targets > spec.targets or regions > spec.regions:
                return (f"stream {s.name!r}, pair {i}: needs {tokens} tokens, {targets} targets and {regions} "
                        f"regions in a row of {spec.length} / {spec.targets} / {spec.regions}")
    return None


class BatchIterator(grain.DatasetIterator):
    """Infinite iterator of host batches: dict of numpy arrays with leading dim rows_per_batch,
    the keys of `assemble_row` plus `stream_ids` [B, P] int32 (stream of each target slot, -1
    where empty) so the trainer can report the loss per stream.

    Process p of process_count reads pairs[p::process_count] of every stream, with p folded
    into its seeds, so processes see disjoint data. A grain DatasetIterator, so grain's orbax
    checkpoint handler saves its (JSON) state beside the model.
    """

    def __init__(self, streams: Sequence[Stream], regions, spec: RowSpec, rows_per_batch: int,
                 mode: str = "packed", budget_for: Mapping[str, int] | Callable[[str], int] = None,
                 seed: int = 0, process_index: int = 0, process_count: int = 1, train: bool = True,
                 window: int = 1, objective: str = "unrolled"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"row mode {mode!r} is not one of {MODES}")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective {objective!r} is not one of {OBJECTIVES}")
        if (objective == "one_pass") != spec.attention_rank:
            raise ValueError(f"objective {objective!r} needs RowSpec(attention_rank={objective == 'one_pass'})")
        if rows_per_batch < 1 or spec.targets < 1:
            raise ValueError(f"need at least one row and one target slot per row, got "
                             f"rows_per_batch={rows_per_batch}, spec.targets={spec.targets}")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
        if window < 1:
            raise ValueError(f"window must be at least 1 pair, got {window}")
        if seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed}")
        if not streams or any(s.weight < 0 for s in streams) or sum(s.weight for s in streams) <= 0:
            raise ValueError("need at least one stream, weights >= 0 and one weight > 0; got "
                             f"{[(s.name, s.weight) for s in streams]}")
        budget_for = DEFAULT_BUDGETS if budget_for is None else budget_for
        self.budget_for = budget_for.__getitem__ if isinstance(budget_for, Mapping) else budget_for
        self.streams, self.spec, self.mode, self.train = list(streams), spec, mode, train
        self.rows_per_batch, self.seed, self.window, self.objective = rows_per_batch, seed, window, objective
        self.process_index, self.process_count = process_index, process_count
        self.regions_of = regions_reader(regions)
        # This process's pairs of each stream, as indices into stream.pairs.
        self.local = [range(process_index, len(s.pairs), process_count) for s in self.streams]
        for s, local in zip(self.streams, self.local):
            if not len(local) and s.weight > 0:
                raise ValueError(f"stream {s.name!r} has {len(s.pairs)} pairs, none for process "
                                 f"{process_index} of {process_count}: give it more pairs or weight 0")
        self._permutations: dict[int, tuple[int, np.ndarray]] = {}  # stream -> (epoch, order)
        self._unrolled: dict[tuple, list[Example]] = {}  # (stream, pair, flip) of open pairs
        n = len(self.streams)
        self.set_state({**self._layout(), "draws": 0, "epochs": [0] * n, "positions": [0] * n,
                        "examples": [0] * n, "open": [EMPTY_PLACE] * window, "turn": 0})

    # -- state ---------------------------------------------------------------------------------

    def _layout(self) -> dict:
        """What a state must have been saved with to be restored here."""
        layout = {"version": STATE_VERSION, "streams": [s.name for s in self.streams],
                  "process": [self.process_index, self.process_count], "window": self.window}
        # Only a one-pass state names its objective, so states saved before it existed restore.
        return {**layout, "objective": self.objective} if self.objective != "unrolled" else layout

    def get_state(self) -> dict:
        """Plain ints and lists (JSON-able, same shapes throughout): per-stream epoch, position
        and examples drawn, the draw counter, the window's open pairs as [stream, local pair,
        next prefix, flip] (EMPTY_PLACE for an empty place) and whose turn it is."""
        return {**self._layout(), "draws": self._draws, "epochs": list(self._epochs),
                "positions": list(self._positions), "examples": list(self._examples),
                "open": [list(o or EMPTY_PLACE) for o in self._open], "turn": self._turn}

    def set_state(self, state: dict) -> None:
        for key, value in self._layout().items():
            if state.get(key) != value:
                raise ValueError(f"batch iterator state has {key}={state.get(key)!r}, this iterator "
                                 f"has {value!r}: restore with the streams, process layout and "
                                 "window the state was saved with")
        self._draws = int(state["draws"])
        self._epochs = [int(x) for x in state["epochs"]]
        self._positions = [int(x) for x in state["positions"]]
        self._examples = [int(x) for x in state["examples"]]
        self._open = [o if o[0] >= 0 else None
                      for o in (tuple(int(x) for x in entry) for entry in state["open"])]
        self._turn = int(state["turn"])

    # -- drawing pairs -------------------------------------------------------------------------

    def _order(self, s: int) -> np.ndarray:
        """Stream s's pair order in its current epoch."""
        epoch = self._epochs[s]
        if self._permutations.get(s, (None,))[0] != epoch:
            rng = np.random.default_rng([self.seed, self.process_index, _PERMUTATION, s, epoch])
            self._permutations[s] = (epoch, rng.permutation(len(self.local[s])))
        return self._permutations[s][1]

    def _draw(self) -> tuple[int, int, int, int]:
        """The next pair as (stream, local pair, first prefix, flip)."""
        lag = [e / s.weight if s.weight > 0 else np.inf for e, s in zip(self._examples, self.streams)]
        s = int(np.argmin(lag))  # ties go to the lower stream index
        i = int(self._order(s)[self._positions[s]])
        self._positions[s] += 1
        if self._positions[s] == len(self.local[s]):
            self._epochs[s], self._positions[s] = self._epochs[s] + 1, 0
        pair = self._pair(s, i)
        self._examples[s] += len(pair.tgt_ids) + 1
        flip = 0
        if self.train and pair.task != "mt":
            rng = np.random.default_rng([self.seed, self.process_index, _FLIP, self._draws])
            flip = int(rng.random() < 0.5)
        self._draws += 1
        return s, i, 0, flip

    def _pair(self, s: int, i: int) -> Pair:
        return self.streams[s].pairs[self.local[s][i]]

    def _examples_of(self, s: int, i: int, flip: int) -> list:
        if (s, i, flip) not in self._unrolled:
            pair = self._pair(s, i)
            where = f"stream {self.streams[s].name!r}, pair {self.local[s][i]}"
            try:
                if self.objective == "one_pass":
                    examples = [one_pass(pair, self.budget_for(pair.task), flip=bool(flip))]
                else:
                    examples = unroll(pair, self.budget_for(pair.task), flip=bool(flip))
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from err
            longest = examples[-1]
            if (len(longest) > self.spec.length or longest.num_regions > self.spec.regions
                    or len(longest.labels) > self.spec.targets):
                what = "a one-pass segment" if self.objective == "one_pass" else "an unrolled example"
                raise ValueError(
                    f"{where}: {what} of {len(longest)} tokens / {longest.num_regions} regions / "
                    f"{len(longest.labels)} targets exceeds the row ({self.spec.length} tokens, "
                    f"{self.spec.regions} regions, {self.spec.targets} targets): raise the row size "
                    f"(data.row_length, data.targets_per_row) or lower the {pair.task!r} sequence budget")
            self._unrolled[s, i, flip] = examples
        return self._unrolled[s, i, flip]

    # -- batches -------------------------------------------------------------------------------

    def __next__(self) -> dict[str, np.ndarray]:
        self._assert_not_closed()
        before = self.get_state()
        try:
            return self._next_batch()
        except BaseException:
            self.set_state(before)  # a batch that failed to build leaves the iterator unmoved
            raise

    def _next_batch(self) -> dict[str, np.ndarray]:
        rows = RowFiller(self.spec, self.rows_per_batch, self.mode)
        misses = 0
        while misses < self.window:
            k = self._turn
            self._turn = (k + 1) % self.window
            s, i, t, flip = self._open[k] or self._draw()
            examples = self._examples_of(s, i, flip)
            if rows.add(examples[t], s):
                misses, t = 0, t + 1
            else:
                misses += 1
            self._open[k] = (s, i, t, flip) if t < len(examples) else None
        # W misses in a row went once round the window: the next batch starts with the first.
        open_keys = {(o[0], o[1], o[3]) for o in self._open if o}
        self._unrolled = {k: v for k, v in self._unrolled.items() if k in open_keys}
        batch = stack_rows([assemble_row([ex for ex, _ in members], self.spec, self.regions_of)
                            for members in rows.members])
        batch["stream_ids"] = np.full((self.rows_per_batch, self.spec.targets), -1, np.int32)
        for r, members in enumerate(rows.members):
            streams = [stream for ex, stream in members for _ in range(len(ex.labels))]
            batch["stream_ids"][r, :len(streams)] = streams
        return batch

    def prefetch(self, buffer_size: int) -> grain.DatasetIterator:
        """This iterator run ahead in a background thread. The wrapper's state is that of the
        last batch handed out, and an error raised while building a batch is re-raised by the
        next() that would have returned it (grain's ThreadPrefetchDatasetIterator)."""
        return grain.experimental.ThreadPrefetchDatasetIterator(self, buffer_size)

    def __str__(self) -> str:
        return (f"BatchIterator(streams={[s.name for s in self.streams]}, mode={self.mode!r}, "
                f"rows_per_batch={self.rows_per_batch}, window={self.window}, "
                f"process={self.process_index}/{self.process_count})")
