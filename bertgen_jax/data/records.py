"""What the format readers hand out, and how they report bad input.

Two kinds of bad input, treated differently by every reader:
- `DataError`: the file itself is broken (missing file, bad JSON, arrays of the
  wrong length, parallel files of different lengths). Always raised: training on a
  half-read corpus is worse than not training.
- `BadRecord`: one record is unusable (non-finite features, empty caption, no
  boxes). Raised when a reader is given `on_bad_record="error"`; with "skip" (the
  default) the record is dropped and counted in a `SkipCounter` the caller logs.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping

import numpy as np

from bertgen_jax.errors import DataError

ON_BAD_RECORD = ("skip", "error")


class BadRecord(DataError):
    """One record cannot be used; `reason` is the short key it is counted under when skipped."""

    def __init__(self, reason: str, file, record: str | None, field: str | None, problem: str,
                 fix: str = ""):
        self.reason = reason
        super().__init__(file, record, field, problem, fix)

    def __reduce__(self):
        return (type(self), (self.reason, self.file, self.record, self.field, self.problem, self.fix))


class SkipCounter:
    """Counts skipped records by reason and keeps the first message of each for the log."""

    def __init__(self):
        self.counts: collections.Counter[str] = collections.Counter()
        self.first: dict[str, str] = {}

    def add(self, problem: BadRecord) -> None:
        self.counts[problem.reason] += 1
        self.first.setdefault(problem.reason, str(problem))

    def merge(self, other: "SkipCounter") -> None:
        """Add another counter's counts (keeping this one's first messages)."""
        self.counts.update(other.counts)
        for reason, message in other.first.items():
            self.first.setdefault(reason, message)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.counts:
            return "skipped 0 records"
        parts = [f"{n} {reason} (first: {self.first[reason]})"
                 for reason, n in sorted(self.counts.items())]
        return f"skipped {self.total} records: " + "; ".join(parts)


def check_on_bad_record(on_bad_record: str) -> None:
    if on_bad_record not in ON_BAD_RECORD:
        raise ValueError(f"on_bad_record must be one of {ON_BAD_RECORD}, got {on_bad_record!r}")


def handle_bad_record(problem: BadRecord, on_bad_record: str, skips: SkipCounter) -> None:
    """Apply the bad-record policy: raise the problem, or count it and let the caller drop it."""
    if on_bad_record == "error":
        raise problem
    skips.add(problem)


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: ndarray fields have no truth value
class Regions:
    """One image's detector output: boxes in pixels with one appearance feature per box."""

    image_w: int
    image_h: int
    boxes: np.ndarray  # [N, 4] float32 (x1, y1, x2, y2), detector-confidence order
    features: np.ndarray  # [N, D] float32, D = 2048 for the bottom-up-attention detector
    classes: np.ndarray | None = None  # [N, C] float32 class scores (C = 1601), when kept

    @property
    def num_boxes(self) -> int:
        return self.boxes.shape[0]


@dataclasses.dataclass(frozen=True)
class CaptionRecord:
    """One annotation line of the original's JSON-lines files with its image's regions."""

    image_id: str
    captions: Mapping[str, str]  # language code ("en", "de", ...) -> caption text
    regions: Regions


@dataclasses.dataclass(frozen=True)
class ImageCaptions:
    """One image of a Karpathy split with all of its reference captions."""

    image_id: str  # the id feature files use: COCO's `cocoid`, else the file name without extension
    filename: str
    split: str  # "train", "val" or "test" ("restval" is reported as "train")
    lang: str
    captions: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class TextPair:
    """One aligned sentence pair of a parallel corpus."""

    src: str
    tgt: str
