"""Sequence unrolling: one tokenized (source, target[, image]) pair -> n+1 `[MASK]` examples.

Layouts (docs/specification.md), `[TO_X]` naming the target language:
  MMT  [TO_X] [CLS] x1..xm [SEP] y<t [MASK] [SEP] [IMG]whole [IMG]r1..rk [END]
  MT   [TO_X] [CLS] x1..xm [SEP] y<t [MASK] [SEP] [END]
  IC   [TO_X] [CLS] [SEP] y<t [MASK] [SEP] [IMG]whole [IMG]r1..rk [END]
Text tokens are type 0 at positions 0..T-1; every region token is type 2 at position T; `[END]`
is type 2 at T+1. The label at `[MASK]` is y_t for t = 1..n, then `[STOP]`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bertgen_jax import vocab
from bertgen_jax.layout import KIND_END, KIND_REGION, KIND_TEXT, TASKS, TYPE_TEXT, TYPE_VISUAL

# Tokens of the longest unrolled example besides source, target and regions:
# [TO_X] [CLS] [SEP] [MASK] [SEP] [END].
FIXED_TOKENS = 6


class TooLong(ValueError):
    """A pair that cannot fit the sequence budget even with its source cut to nothing."""


@dataclasses.dataclass(frozen=True)
class Pair:
    """A tokenized training pair. `image` is a feature-store index (-1: no image) and
    `num_regions` the regions it has there, whole-image region included."""
    task: str
    tgt_lang: str
    src_ids: np.ndarray
    tgt_ids: np.ndarray
    image: int = -1
    num_regions: int = 0


@dataclasses.dataclass(frozen=True)
class Example:
    """One unrolled example. Region tokens (and text tokens, for the whole image) index the
    first `num_regions` regions of `image`, boxes mirrored when `flip`."""
    token_ids: np.ndarray  # [S] int32
    token_kind: np.ndarray  # [S] int32
    token_type: np.ndarray  # [S] int32
    positions: np.ndarray  # [S] int32
    region_index: np.ndarray  # [S] int32, -1 where no region
    mask_index: int
    label: int
    image: int
    num_regions: int
    flip: bool

    def __len__(self):
        return len(self.token_ids)

    # The interface rows.py shares with one_pass.Segment: target slots and attention rank.
    @property
    def mask_indices(self) -> np.ndarray:
        return np.array([self.mask_index], np.int32)

    @property
    def labels(self) -> np.ndarray:
        return np.array([self.label], np.int32)

    attention_rank = None  # full attention within the example


def fit_budget(pair: Pair, budget: int) -> tuple[np.ndarray, int]:
    """(source ids, regions) cut so the longest unrolled example has at most `budget` tokens.

    Like the original, each cut takes from whichever is longer, the detector boxes or the text;
    the whole-image region and the target are never cut (the target is what is learned).
    """
    src, regions, n_tgt = pair.src_ids, pair.num_regions, len(pair.tgt_ids)
    while FIXED_TOKENS + len(src) + n_tgt + regions > budget:
        boxes_longer = regions - 1 >= len(src) + n_tgt
        if regions > 1 and (boxes_longer or len(src) == 0):
            regions -= 1
        elif len(src):
            src = src[:-1]
        else:
            raise TooLong(f"target of {n_tgt} wordpieces does not fit a sequence budget of {budget} "
                          f"({pair.num_regions} regions)")
    return src, regions


def fitted_head(pair: Pair, budget: int) -> tuple[np.ndarray, int]:
    """(`[TO_X] [CLS] src [SEP]` ids, regions) of a pair cut to budget: IC has no source, MT no
    regions, and a visual pair needs at least its whole-image region."""
    if pair.task not in TASKS:
        raise ValueError(f"unknown task {pair.task!r}; expected one of {TASKS}")
    src, regions = fit_budget(pair, budget)
    if pair.task == "ic":
        src = src[:0]
    if pair.task == "mt":
        regions = 0
    elif regions < 1:
        raise ValueError(f"{pair.task} pair without an image region")
    head = np.concatenate([[vocab.lang_tag_id(pair.tgt_lang), vocab.CLS_ID], src, [vocab.SEP_ID]])
    return head.astype(np.int32), int(regions)


def unroll(pair: Pair, budget: int, flip: bool = False) -> list[Example]:
    """The n+1 examples of a pair, shortest prefix first."""
    head, regions = fitted_head(pair, budget)
    tgt = np.asarray(pair.tgt_ids, np.int32)
    out = []
    for t in range(len(tgt) + 1):
        text = np.concatenate([head, tgt[:t], [vocab.MASK_ID, vocab.SEP_ID]]).astype(np.int32)
        n_text = len(text)
        size = n_text + regions + 1
        kind = np.full(size, KIND_REGION, np.int32)
        kind[:n_text], kind[-1] = KIND_TEXT, KIND_END
        region_index = np.full(size, -1, np.int32)
        if regions:
            region_index[:n_text] = 0  # every text token sees the whole image
            region_index[n_text:n_text + regions] = np.arange(regions)
        positions = np.full(size, n_text, np.int32)
        positions[:n_text] = np.arange(n_text)
        positions[-1] = n_text + 1
        out.append(Example(
            token_ids=np.concatenate([text, np.zeros(regions + 1, np.int32)]),
            token_kind=kind,
            token_type=np.where(kind == KIND_TEXT, TYPE_TEXT, TYPE_VISUAL).astype(np.int32),
            positions=positions,
            region_index=region_index,
            mask_index=n_text - 2,
            label=int(tgt[t]) if t < len(tgt) else vocab.STOP_ID,
            image=pair.image if regions else -1,
            num_regions=regions,
            flip=bool(flip and regions),
        ))
    return out
