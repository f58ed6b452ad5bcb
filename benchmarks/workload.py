"""A synthetic BERTGEN workload shared by the JAX and the PyTorch benchmarks: same pairs, same
regions, same model sizes, so the two sides do identical work.

`synthetic_pairs(n, seed, vocab_size, mix)` gives `n` tokenized `Pair`s and their
`regions_of(image) -> (boxes [N, 4], features [N, D], image_wh [2])`. Distributions, chosen to
look like the paper's data after mBERT WordPiece tokenization:

  task          exactly round(n * share) pairs per task (largest remainder), in shuffled order;
                mix defaults to IC 0.4 / MMT 0.3 / MT 0.3
  MMT           source ~ round(N(13, 4^2)) clipped to [4, 40] wordpieces (Multi30k sentences are
                ~12 words); target ~ round(N(14, 4.5^2)) clipped to [4, 40] (German and French
                split into a few more pieces than English)
  IC            no source; target as MMT's (Flickr30k captions: ~12 words)
  MT            source ~ round(N(27, 10^2)) clipped to [5, 100]; target ~ round(N(28, 10^2))
                clipped to [5, 100] (IWSLT'14 talks: ~20 words, ~25-30 wordpieces)
  target lang   uniform over en, de, fr (IC, MMT) or en, de, fr, tr (MT)
  word ids      uniform over [104, vocab_size): clear of [PAD], [STOP], the language tags and
                [UNK] [CLS] [SEP] [MASK]
  images        one per IC / MMT pair; size W ~ U{333..500}, H ~ U{250..500} pixels (Flickr)
  detector RoIs U{10..100} boxes (the bottom-up-attention detector keeps 10-100), plus the
                whole-image box [0, 0, W-1, H-1] first; so num_regions is 11..101. `unroll`
                then cuts regions (and source) to the sequence budget of 64 like the original
  boxes         corners uniform in the image, x1 < x2 and y1 < y2, at least 8 pixels a side
  features      |N(0, 1)| per dimension (post-ReLU-like, non-negative), D = 2048 by default;
                the whole-image feature is the mean of the RoI features, as the original's

Everything is a function of `seed` (and the image index for region arrays, which are made on
demand so that 100,000 pairs do not hold 40 GB of features).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bertgen_jax.data.unroll import Pair
from bertgen_jax.model import ModelConfig

DEFAULT_MIX = {"ic": 0.4, "mmt": 0.3, "mt": 0.3}
FIRST_WORD_ID = 104  # above [MASK]=103: every special id is below
# (mean, sd, low, high) of wordpiece counts.
SOURCE_LEN = {"mmt": (13, 4, 4, 40), "ic": (0, 0, 0, 0), "mt": (27, 10, 5, 100)}
TARGET_LEN = {"mmt": (14, 4.5, 4, 40), "ic": (14, 4.5, 4, 40), "mt": (28, 10, 5, 100)}
TARGET_LANGS = {"ic": ("en", "de", "fr"), "mmt": ("en", "de", "fr"), "mt": ("en", "de", "fr", "tr")}
BOXES = (10, 100)  # detector boxes per image, before the whole-image box is added
IMAGE_W, IMAGE_H = (333, 500), (250, 500)
MIN_BOX = 8.0

SIZES = {
    # The ToyWorld demo's model (configs/multitask.py small_model): ToyWorld's vocabulary of
    # 1,400, a 128-wide feed-forward and no dropout, as the demo trains it.
    "demo": ModelConfig(vocab_size=1400, hidden_size=128, num_layers=2, num_heads=4, intermediate_size=128,
                        dropout=0.0, attention_dropout=0.0),
    "tiny": ModelConfig(vocab_size=8000, hidden_size=128, num_layers=2, num_heads=2,
                        intermediate_size=512),
    "small": ModelConfig(vocab_size=30000, hidden_size=256, num_layers=4, num_heads=4,
                         intermediate_size=1024),
    "base": ModelConfig(),  # mBERT-sized BERTGEN: 12 x 768, 12 heads, 3072, vocab 119,547
}


def task_counts(n: int, mix: dict) -> dict:
    """Exact pairs per task: round(n * share), remainders to the largest fractions."""
    shares = {t: w / sum(mix.values()) for t, w in mix.items() if w > 0}
    counts = {t: int(np.floor(n * s)) for t, s in shares.items()}
    by_remainder = sorted(shares, key=lambda t: (-(n * shares[t] - counts[t]), t))
    for t in by_remainder[: n - sum(counts.values())]:
        counts[t] += 1
    return counts


def _length(rng, spec) -> int:
    mean, sd, low, high = spec
    return int(np.clip(np.rint(rng.normal(mean, sd)), low, high)) if high else 0


def _image_regions(seed: int, image: int, boxes: int, feature_dim: int):
    """(boxes [N, 4], features [N, D], image_wh [2]) of one image, whole image first."""
    rng = np.random.default_rng([seed, 1, image])
    w = float(rng.integers(IMAGE_W[0], IMAGE_W[1] + 1))
    h = float(rng.integers(IMAGE_H[0], IMAGE_H[1] + 1))
    x = np.sort(rng.uniform(0, w - 1 - MIN_BOX, (boxes, 2)), axis=1)
    y = np.sort(rng.uniform(0, h - 1 - MIN_BOX, (boxes, 2)), axis=1)
    x[:, 1] = np.maximum(x[:, 1], x[:, 0] + MIN_BOX)
    y[:, 1] = np.maximum(y[:, 1], y[:, 0] + MIN_BOX)
    rois = np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)
    feats = np.abs(rng.standard_normal((boxes, feature_dim), dtype=np.float32))
    return (np.vstack([[0.0, 0.0, w - 1, h - 1], rois]).astype(np.float32),
            np.vstack([feats.mean(0, keepdims=True), feats]).astype(np.float32),
            np.array([w, h], np.float32))


def synthetic_pairs(n: int, seed: int, vocab_size: int, mix: dict | None = None,
                    feature_dim: int = 2048):
    """(pairs, regions_of): `n` pairs drawn as the module docstring says, deterministic in seed."""
    mix = DEFAULT_MIX if mix is None else mix
    unknown = set(mix) - set(TARGET_LEN)
    if unknown:
        raise ValueError(f"mix names unknown tasks {sorted(unknown)}; tasks are {sorted(TARGET_LEN)}")
    if vocab_size <= FIRST_WORD_ID:
        raise ValueError(f"vocab_size {vocab_size} leaves no word ids above the special tokens (< {FIRST_WORD_ID})")
    rng = np.random.default_rng([seed, 0])
    tasks = np.array([t for t, c in task_counts(n, mix).items() for _ in range(c)])
    tasks = tasks[rng.permutation(len(tasks))]
    pairs, boxes_of = [], []
    for task in tasks:
        task = str(task)
        src = rng.integers(FIRST_WORD_ID, vocab_size, _length(rng, SOURCE_LEN[task]), dtype=np.int32)
        tgt = rng.integers(FIRST_WORD_ID, vocab_size, _length(rng, TARGET_LEN[task]), dtype=np.int32)
        lang = str(rng.choice(TARGET_LANGS[task]))
        image, regions = -1, 0
        if task != "mt":
            image = len(boxes_of)
            boxes_of.append(int(rng.integers(BOXES[0], BOXES[1] + 1)))
            regions = boxes_of[-1] + 1
        pairs.append(Pair(task, lang, src, tgt, image, regions))

    def regions_of(image: int):
        if not 0 <= image < len(boxes_of):
            raise IndexError(f"image {image} is not one of this workload's {len(boxes_of)} images")
        return _image_regions(seed, image, boxes_of[image], feature_dim)

    return pairs, regions_of


def size(name: str, **changes) -> ModelConfig:
    """A named model size, optionally changed (e.g. dtype='bfloat16', dropout=0.0)."""
    if name not in SIZES:
        raise ValueError(f"unknown model size {name!r}; sizes are {sorted(SIZES)}")
    return dataclasses.replace(SIZES[name], **changes)
