"""The one-pass layout of a pair: all n+1 predictions of a target in one segment (opt-in,
`config.objective = "one_pass"`; the original unrolls a pair into n+1 examples, unroll.py).

A segment holds, in this order:
  C    the context: `[TO_X] [CLS] src [SEP]`, the pair's region tokens and `[END]`
  y    the target's content tokens y_1..y_n
  Q    n+1 query tokens Q_1..Q_(n+1), each a `[MASK]`; Q_i is labelled y_i, Q_(n+1) `[STOP]`
Positions: C's text tokens 0..h-1 (h = len of `[TO_X] [CLS] src [SEP]`); y_i and Q_i share
h + i - 1, the position y_i has in the original layout; region tokens sit at h + 2 and `[END]`
at h + 3, where they are in the original's first unrolled example (empty prefix), whatever
the target's length, so that a decoder can compute the context once before decoding. Token
types, the whole-image feature on every text token (y and Q too) and the region geometry are
those of the original.

Who sees whom is coded by one int per token, `attention_rank` (layout.py): C 0, y_j 2j,
Q_i 2i - 1. A token sees the tokens of its segment whose rank is even and not above its own,
and itself. So C sees C; y_j sees C and y_1..y_j; Q_i sees C, y_1..y_(i-1) and itself; no
token but Q_i sees Q_i. Q_i's prediction is therefore the original's prediction from prefix
y_<i, with the same positions and types, apart from the trailing `[SEP]` and the moving region
positions of the original's layout.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bertgen_jax import vocab
from bertgen_jax.data.unroll import Pair, fitted_head
from bertgen_jax.layout import KIND_END, KIND_REGION, KIND_TEXT, TYPE_TEXT, TYPE_VISUAL

OBJECTIVES = ("unrolled", "one_pass")


@dataclasses.dataclass(frozen=True)
class Segment:
    """One pair in the one-pass layout; the fields of unroll.Example plus the attention rank,
    with a target slot per query token."""
    token_ids: np.ndarray  # [S] int32
    token_kind: np.ndarray  # [S] int32
    token_type: np.ndarray  # [S] int32
    positions: np.ndarray  # [S] int32
    region_index: np.ndarray  # [S] int32, -1 where no region
    attention_rank: np.ndarray  # [S] int32
    mask_indices: np.ndarray  # [n+1] int32 where Q_1..Q_(n+1) are
    labels: np.ndarray  # [n+1] int32 y_1..y_n, [STOP]
    image: int
    num_regions: int
    flip: bool

    def __len__(self):
        return len(self.token_ids)


def context_positions(h: int, regions: int) -> np.ndarray:
    """Positions of C: text 0..h-1, every region h + 2, `[END]` h + 3 (see module docstring)."""
    return np.concatenate([np.arange(h), np.full(regions, h + 2), [h + 3]]).astype(np.int32)


def one_pass(pair: Pair, budget: int, flip: bool = False) -> Segment:
    """The pair's segment. Source and regions are cut as for unrolling (fit_budget), so both
    objectives train on the same context; the segment itself is n - 1 tokens longer than the
    longest unrolled example (n content tokens, n+1 queries, no trailing `[SEP]`)."""
    head, regions = fitted_head(pair, budget)
    return segment(head, regions, pair.image if regions else -1, pair.tgt_ids, flip)


def segment(head, regions: int, image: int, tgt, flip: bool = False) -> Segment:
    """The segment of a fitted context (`[TO_X] [CLS] src [SEP]` ids, region count, image) and
    target ids; decoders build the ones of their prefixes with it too."""
    tgt = np.asarray(tgt, np.int32)
    n = len(tgt)
    h, c = len(head), len(head) + regions + 1
    kind = np.concatenate([np.full(h, KIND_TEXT), np.full(regions, KIND_REGION), [KIND_END],
                           np.full(2 * n + 1, KIND_TEXT)]).astype(np.int32)
    token_ids = np.concatenate([head, np.zeros(regions + 1, np.int32), tgt, np.full(n + 1, vocab.MASK_ID)])
    target_positions = h + np.arange(n + 1)
    positions = np.concatenate([context_positions(h, regions), target_positions[:n], target_positions])
    region_index = np.full(len(kind), -1, np.int32)
    if regions:
        region_index[kind == KIND_TEXT] = 0  # every text token sees the whole image
        region_index[h:h + regions] = np.arange(regions)
    i = np.arange(1, n + 2)
    rank = np.concatenate([np.zeros(c), 2 * i[:n], 2 * i - 1]).astype(np.int32)
    return Segment(
        token_ids=token_ids.astype(np.int32), token_kind=kind,
        token_type=np.where(kind == KIND_TEXT, TYPE_TEXT, TYPE_VISUAL).astype(np.int32),
        positions=positions.astype(np.int32), region_index=region_index, attention_rank=rank,
        mask_indices=(c + n + np.arange(n + 1)).astype(np.int32),
        labels=np.concatenate([tgt, [vocab.STOP_ID]]).astype(np.int32),
        image=image, num_regions=int(regions), flip=bool(flip and regions))
