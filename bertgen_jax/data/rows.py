"""Fixed-shape rows of examples: `faithful` (one example per row, padded, as the original) or
`packed` (several examples per row, each its own attention segment). An example is an unrolled
prefix (unroll.Example, one target) or a one-pass segment (one_pass.Segment, a pair's n+1
targets and an attention rank per token).

A row holds L tokens, P target slots and R region slots. In a packed row the examples that use
the same image regions (the unrolled prefixes of one pair) share its region slots, so an image
is stored once per row however many of its prefixes the row holds.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bertgen_jax.data.unroll import Example
from bertgen_jax.layout import KIND_PAD

MODES = ("faithful", "packed")


@dataclasses.dataclass(frozen=True)
class RowSpec:
    length: int  # L tokens per row
    targets: int  # P [MASK] slots per row (1 is enough in faithful mode)
    regions: int  # R region slots per row
    feature_dim: int
    attention_rank: bool = False  # rows carry one_pass's attention_rank (layout.BATCH_KEYS)


def region_key(ex: Example):
    """What examples sharing a row may share: the same regions of the same image, same flip."""
    return (ex.image, ex.num_regions, ex.flip) if ex.num_regions else None


class RowFiller:
    """Rows filled first fit: an example goes to the first row with room for its tokens, its
    target slots and its regions (none if the row already holds that image's regions).
    Faithful rows take one example each. The one place the room rule lives."""

    def __init__(self, spec: RowSpec, count: int, mode: str):
        if mode not in MODES:
            raise ValueError(f"row mode {mode!r} is not one of {MODES}")
        self.spec, self.mode = spec, mode
        self.members: list[list[tuple[Example, int]]] = []
        self.tokens, self.targets, self.regions, self.room = (np.zeros(0, np.int64) for _ in range(4))
        self.holders: dict[tuple, np.ndarray] = {}  # region key -> rows that already hold them
        self.open_rows(count)

    def open_rows(self, n: int = 1) -> None:
        self.members += [[] for _ in range(n)]
        self.tokens = np.append(self.tokens, np.full(n, self.spec.length))
        self.targets = np.append(self.targets, np.full(n, self.spec.targets))
        self.room = np.append(self.room, np.full(n, self.spec.targets if self.mode == "packed" else 1))  # examples
        self.regions = np.append(self.regions, np.full(n, self.spec.regions))
        for key, rows in self.holders.items():
            self.holders[key] = np.append(rows, np.zeros(n, bool))

    def add(self, ex: Example, tag: int) -> bool:
        """Place `ex` (remembered with `tag`); False when no row has room."""
        key = region_key(ex)
        need = np.full(len(self.members), ex.num_regions if key is not None else 0)
        if key in self.holders:
            need[self.holders[key]] = 0  # shared with the examples of that image already there
        fits = (self.tokens >= len(ex)) & (self.targets >= len(ex.labels)) & (self.room >= 1) & (self.regions >= need)
        if not fits.any():
            return False
        r = int(np.argmax(fits))
        self.members[r].append((ex, tag))
        self.tokens[r] -= len(ex)
        self.targets[r] -= len(ex.labels)
        self.room[r] -= 1
        self.regions[r] -= need[r]
        if key is not None:
            self.holders.setdefault(key, np.zeros(len(self.members), bool))[r] = True
        return True


def plan_rows(examples: list[Example], spec: RowSpec, mode: str = "packed") -> list[list[int]]:
    """Indices of `examples` for each row, first fit over all rows opened so far."""
    filler = RowFiller(spec, 0, mode)
    for i, ex in enumerate(examples):
        if len(ex) > spec.length or ex.num_regions > spec.regions or len(ex.labels) > spec.targets:
            raise ValueError(f"example of {len(ex)} tokens / {ex.num_regions} regions / {len(ex.labels)} "
                             f"targets exceeds the row ({spec.length} tokens, {spec.regions} regions, "
                             f"{spec.targets} targets): raise the row size")
        if not filler.add(ex, i):
            filler.open_rows(1)
            filler.add(ex, i)
    return [[i for _, i in members] for members in filler.members]


def assemble_row(examples: list[Example], spec: RowSpec, regions_of) -> dict[str, np.ndarray]:
    """One row's arrays. `regions_of(image)` gives that image's (boxes [N, 4], features [N, D],
    image_wh [2]) with the whole-image region first."""
    L, P, R = spec.length, spec.targets, spec.regions
    row = {k: np.zeros(L, np.int32) for k in ("token_ids", "token_kind", "token_type", "positions", "segment_ids")}
    row["region_index"] = np.full(L, -1, np.int32)
    row["region_features"] = np.zeros((R, spec.feature_dim), np.float32)
    row["region_boxes"] = np.zeros((R, 4), np.float32)
    row["region_image_wh"] = np.ones((R, 2), np.float32)  # ones keep the box code finite in empty slots
    row["mask_positions"] = np.zeros(P, np.int32)
    row["labels"] = np.zeros(P, np.int32)
    row["label_weights"] = np.zeros(P, np.float32)
    if spec.attention_rank:
        row["attention_rank"] = np.zeros(L, np.int32)
    slots, at, used, tslot = {}, 0, 0, 0
    for seg, ex in enumerate(examples, start=1):
        key = region_key(ex)
        if key is not None and key not in slots:
            boxes, feats, wh = regions_of(ex.image)
            boxes, feats = boxes[:ex.num_regions].copy(), feats[:ex.num_regions]
            if ex.flip:  # mirror x about the image's centre: x -> (W - 1) - x
                boxes[:, [0, 2]] = (wh[0] - 1) - boxes[:, [2, 0]]
            n = ex.num_regions
            row["region_boxes"][used:used + n] = boxes
            row["region_features"][used:used + n] = feats
            row["region_image_wh"][used:used + n] = wh
            slots[key], used = used, used + n
        n = len(ex)
        span = slice(at, at + n)
        for k in ("token_ids", "token_kind", "token_type", "positions"):
            row[k][span] = getattr(ex, k)
        row["segment_ids"][span] = seg
        offset = slots[key] if key is not None else 0
        row["region_index"][span] = np.where(ex.region_index >= 0, ex.region_index + offset, -1)
        if spec.attention_rank and ex.attention_rank is not None:
            row["attention_rank"][span] = ex.attention_rank
        k = len(ex.labels)
        if tslot + k <= P:
            row["mask_positions"][tslot:tslot + k] = at + ex.mask_indices
            row["labels"][tslot:tslot + k] = ex.labels
            row["label_weights"][tslot:tslot + k] = 1.0
        at, tslot = at + n, tslot + k
    if at > L or tslot > P or used > R:
        raise ValueError(f"row overflow: {at}/{L} tokens, {tslot}/{P} targets, {used}/{R} regions")
    return row


def real_token_fraction(batch: dict[str, np.ndarray]) -> float:
    """Share of row positions holding a token rather than padding."""
    return float(np.mean(batch["token_kind"] != KIND_PAD))


def stack_rows(rows: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}
