"""ToyWorld: a small, deterministic, multilingual and multimodal corpus in BERTGEN's data formats.

Scenes of coloured shapes, "seen" as detector RoI sets, and described in English, German,
French and Turkish, give the paper's three tasks at a size that generates in seconds:
image captioning (EN, DE, TR; FR only as a zero-shot test), multimodal translation
(EN<->DE, EN<->FR, sources that leave out what only the image shows; DE<->FR zero-shot)
and text-only translation of a separate sentence family (EN<->DE, EN<->FR, EN<->TR;
DE<->FR zero-shot). docs/toyworld.md describes the tasks and the file layout.

    python -m bertgen_jax.toyworld --out DIR --seed 0 --scale demo
"""

import argparse
import json
import sys
import time
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..files import write_atomic
from ..vocab import SPECIAL_IDS
from . import captions
from . import scenes
from . import sentences
from . import vocab as toy_vocab

SPLITS = ("train", "val", "test")
FEATURE_DIM = 2048
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Scale:
    images: dict  # split -> scenes (images)
    tr_train_images: int  # Turkish captions cover part of train only, as TASVIRET is small
    mt_pairs: dict  # split -> sentence pairs per language pair


SCALES = {
    "tiny": Scale({"train": 60, "val": 12, "test": 12}, 30, {"train": 60, "val": 12, "test": 12}),
    "demo": Scale({"train": 2000, "val": 200, "test": 200}, 1000, {"train": 3000, "val": 200, "test": 200}),
}

# (pair, splits): IC EN/DE share images (Flickr30k); TR has its own subset; FR is test only.
IC_PAIRS = (("en-de", SPLITS), ("en-tr", SPLITS), ("en-fr", ("test",)))
MMT_DIRECTIONS = (("en", "de"), ("de", "en"), ("en", "fr"), ("fr", "en"))
MT_PAIRS = ("en-de", "en-fr", "en-tr")
ZERO_SHOT_PAIR = "de-fr"  # never trained: MMT and MT test sets in both directions
# Field rule of the original's jsonl: English lives in caption_en, the other language in
# caption_de. The one pair without English (de-fr) puts German in caption_en.
SLOT_ORDER = ("en", "de", "fr", "tr")


def fields(a: str, b: str) -> dict:
    """Language -> jsonl field for a file holding languages a and b."""
    first, second = sorted((a, b), key=SLOT_ORDER.index)
    return {first: "caption_en", second: "caption_de"}


def frcnn_path(split: str, image_id: int) -> str:
    # Annotation files sit next to the zips, so this path reads the same whether a reader
    # resolves it against the corpus root or against the annotation file's folder.
    return f"{split}_frcnn.zip@/{image_id:08d}.json"


def image_name(image_id: int) -> str:
    return f"{image_id:08d}"


@lru_cache(maxsize=4)
def _projection(feature_dim: int) -> np.ndarray:
    return scenes.projection(feature_dim)


def image_detections(seed: int, image_id: int, scene: tuple, feature_dim: int) -> dict:
    """The detector output stored for one image; its own generator, so any image can be rebuilt alone."""
    rng = np.random.default_rng([seed, 1, image_id])
    return scenes.detect(scene, rng, _projection(feature_dim))


@dataclass
class Corpus:
    seed: int
    scale: str
    feature_dim: int
    images: dict  # split -> [(image_id, scene)]
    jsonl: dict  # relative path -> [record]
    text: dict  # relative path -> [line]
    streams: list  # manifest entries


def _sample_images(rng: np.random.Generator, counts: dict) -> dict:
    """Scenes per split, no scene in two splits; ids run on across splits from 1."""
    seen, images, next_id = set(), {}, 1
    for split in SPLITS:
        images[split] = []
        while len(images[split]) < counts[split]:
            scene = scenes.sample_scene(rng)
            if scenes.scene_key(scene) in seen:
                continue
            seen.add(scenes.scene_key(scene))
            images[split].append((next_id, scene))
            next_id += 1
    return images


def _ic(corpus: Corpus, scale: Scale) -> None:
    for pair, splits in IC_PAIRS:
        a, b = pair.split("-")
        slot = fields(a, b)
        for split in splits:
            imgs = corpus.images[split]
            if (pair, split) == ("en-tr", "train"):
                imgs = imgs[: scale.tr_train_images]
            path = f"ic_{pair}_{split}.jsonl"
            # One line per (image, frame), like Flickr30k's several captions per image.
            corpus.jsonl[path] = [
                {"image": image_name(i), "frcnn": frcnn_path(split, i),
                 "caption_en": captions.describe(scene, a, frame), "caption_de": captions.describe(scene, b, frame)}
                for i, scene in imgs for frame in captions.caption_frames(scene)]
            for lang in (a, b):
                if lang == "en" and pair != "en-de":
                    continue  # English captioning reads the en-de files only
                corpus.streams.append({
                    "name": f"ic_{lang}", "task": "ic", "src": None, "tgt": lang, "split": split,
                    "zero_shot": lang == "fr", "format": "jsonl", "file": path, "src_field": None,
                    "tgt_field": slot[lang], "features": f"{split}_frcnn.zip",
                    "count": len(corpus.jsonl[path]), "images": len(imgs)})


def _omissions(rng: np.random.Generator, n: int) -> list:
    # Colour is dropped more often than size: only the RoI features show it, size shows in the box too.
    return [tuple(a for a, p in (("colour", 0.5), ("size", 0.35)) if rng.random() < p) for _ in range(n)]


def _mmt(corpus: Corpus, rng: np.random.Generator) -> None:
    zero_shot = tuple(ZERO_SHOT_PAIR.split("-"))
    directions = [(d, SPLITS) for d in MMT_DIRECTIONS] + [(d, ("test",)) for d in (zero_shot, zero_shot[::-1])]
    for (src, tgt), splits in directions:
        slot = fields(src, tgt)
        for split in splits:
            path = f"mmt_{src}-{tgt}_{split}.jsonl"
            records = []
            for i, scene in corpus.images[split]:
                frame = str(rng.choice(captions.caption_frames(scene)))
                # The source leaves attributes out; the target always states everything.
                source = captions.describe(scene, src, frame, _omissions(rng, len(scene)))
                texts = {slot[src]: source, slot[tgt]: captions.describe(scene, tgt, frame)}
                records.append({"image": image_name(i), "frcnn": frcnn_path(split, i),
                                "caption_en": texts["caption_en"], "caption_de": texts["caption_de"]})
            corpus.jsonl[path] = records
            corpus.streams.append({
                "name": f"mmt_{src}-{tgt}", "task": "mmt", "src": src, "tgt": tgt, "split": split,
                "zero_shot": (src, tgt) not in MMT_DIRECTIONS, "format": "jsonl", "file": path,
                "src_field": slot[src], "tgt_field": slot[tgt], "features": f"{split}_frcnn.zip",
                "count": len(records), "images": len(records)})


def _mt(corpus: Corpus, rng: np.random.Generator, scale: Scale, progress: bool) -> None:
    jobs = [(pair, split) for split in SPLITS for pair in MT_PAIRS] + [(ZERO_SHOT_PAIR, "test")]
    total = sum(scale.mt_pairs[split] for _, split in jobs)
    seen = set()
    with tqdm(total=total, desc="MT sentences", unit="pair", disable=not progress) as bar:
        for pair, split in jobs:
            a, b = pair.split("-")
            chosen = []
            # Meanings are unique corpus-wide, so no sentence crosses splits (or pairs).
            while len(chosen) < scale.mt_pairs[split]:
                s = sentences.sample_sentence(rng)
                if s.meaning() not in seen:
                    seen.add(s.meaning())
                    chosen.append(s)
                    bar.update(1)
            files = {lang: f"mt/{pair}/{split}.{lang}" for lang in (a, b)}
            for lang, path in files.items():
                corpus.text[path] = [sentences.realise(s, lang) for s in chosen]
            for src, tgt in ((a, b), (b, a)):
                corpus.streams.append({
                    "name": f"mt_{src}-{tgt}", "task": "mt", "src": src, "tgt": tgt, "split": split,
                    "zero_shot": pair == ZERO_SHOT_PAIR, "format": "text", "src_file": files[src],
                    "tgt_file": files[tgt], "count": len(chosen)})


def build_corpus(seed: int = 0, scale: str = "tiny", feature_dim: int | None = None,
                 progress: bool = False) -> Corpus:
    """Everything but the detector arrays (image_detections() rebuilds those), in memory."""
    if scale not in SCALES:
        raise ValueError(f"unknown ToyWorld scale {scale!r}; known: {sorted(SCALES)}")
    dim = feature_dim or FEATURE_DIM
    if dim < scenes.ATTR_DIM:
        raise ValueError(f"feature_dim={dim} cannot hold the {scenes.ATTR_DIM} scene attributes; use >= {scenes.ATTR_DIM}")
    sc = SCALES[scale]
    # Separate streams per part, so e.g. more MT sentences never change the scenes.
    scene_ss, mmt_ss, mt_ss = np.random.SeedSequence(seed).spawn(3)
    corpus = Corpus(seed, scale, dim, _sample_images(np.random.default_rng(scene_ss), sc.images), {}, {}, [])
    _ic(corpus, sc)
    _mmt(corpus, np.random.default_rng(mmt_ss))
    _mt(corpus, np.random.default_rng(mt_ss), sc, progress)
    return corpus


def _write_zip(path: Path, entries) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in entries:
            # A fixed timestamp and mode keep the archive byte-identical from run to run.
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)


def _write_lines(path: Path, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _write_images(corpus: Corpus, out: Path, split: str, bar) -> None:
    truth = []

    def entries():
        for image_id, scene in corpus.images[split]:
            det = image_detections(corpus.seed, image_id, scene, corpus.feature_dim)
            truth.append({"image": image_name(image_id), "frcnn": frcnn_path(split, image_id),
                          "num_boxes": len(det["boxes"]),
                          "objects": [{"shape": o.shape, "colour": o.colour, "size": o.size,
                                       "position": o.position, "box_index": k}
                                      for o, k in zip(scene, det["box_index"])]})
            bar.update(1)
            yield f"{image_id:08d}.json", scenes.feature_json(image_id, det)

    _write_zip(out / f"{split}_frcnn.zip", entries())
    _write_lines(out / f"scenes_{split}.jsonl", (json.dumps(t) for t in truth))


@lru_cache(maxsize=1)
def _vocab_lines() -> tuple:
    # Seed- and scale-independent, so build it once per process.
    return tuple(toy_vocab.build_vocab())


def write_corpus(corpus: Corpus, out_dir, progress: bool = False) -> dict:
    """Write every file and manifest.json; returns the manifest."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tqdm(total=sum(len(v) for v in corpus.images.values()), desc="RoI features", unit="image",
              disable=not progress) as bar:
        for split in SPLITS:
            _write_images(corpus, out, split, bar)
    for path, records in corpus.jsonl.items():
        _write_lines(out / path, (json.dumps(r, ensure_ascii=False) for r in records))
    for path, lines in corpus.text.items():
        _write_lines(out / path, lines)
    vocab = _vocab_lines()
    _write_lines(out / "vocab.txt", vocab)
    manifest = {
        "name": "ToyWorld",
        "format_version": FORMAT_VERSION,
        "seed": corpus.seed,
        "scale": corpus.scale,
        "feature_dim": corpus.feature_dim,
        "image_size": [scenes.IMAGE_W, scenes.IMAGE_H],
        "languages": list(SLOT_ORDER),
        "classes": list(scenes.CLASSES),
        "attributes": {"shape": list(scenes.SHAPES), "colour": list(scenes.COLOURS),
                       "size": list(scenes.SIZES), "position": list(scenes.POSITIONS)},
        "vocab": "vocab.txt",
        "vocab_size": len(vocab),
        "special_ids": dict(SPECIAL_IDS),
        "features": {s: {"file": f"{s}_frcnn.zip", "images": len(corpus.images[s]),
                         "scenes": f"scenes_{s}.jsonl"} for s in SPLITS},
        "streams": corpus.streams,
    }
    # Last and whole: a manifest.json present means a complete corpus (datasets reuses it as is).
    write_atomic(str(out / "manifest.json"), json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return manifest


def generate(out_dir, seed: int = 0, scale: str = "tiny", feature_dim: int | None = None,
             progress: bool | None = None) -> dict:
    """Build and write a ToyWorld corpus under out_dir; returns the manifest. Same arguments,
    same bytes. progress=None shows progress bars only on a terminal."""
    if progress is None:
        progress = sys.stderr.isatty()
    return write_corpus(build_corpus(seed, scale, feature_dim, progress), out_dir, progress)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", choices=sorted(SCALES), default="tiny")
    parser.add_argument("--feature-dim", type=int, default=None, help=f"RoI feature size (default {FEATURE_DIM})")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    manifest = generate(args.out, args.seed, args.scale, args.feature_dim)
    train = [s for s in manifest["streams"] if s["split"] == "train"]
    print(f"ToyWorld {args.scale} seed {args.seed} -> {args.out} in {time.perf_counter() - start:.1f}s: "
          f"{sum(f['images'] for f in manifest['features'].values())} images, "
          f"{len(train)} training streams of {sum(s['count'] for s in train)} captions/pairs in all, "
          f"vocab {manifest['vocab_size']}")


if __name__ == "__main__":
    main()
