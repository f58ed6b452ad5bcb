"""Karpathy-split caption files for Flickr30k, Flickr8k and COCO (`dataset_*.json`).

    {"images": [{"filename": "1000092795.jpg", "imgid": 0, "split": "train",
                 "sentences": [{"raw": "Two young guys ...", "tokens": [...]}, ...]}, ...]}

COCO entries also carry `cocoid`, the id its feature files use. As is usual for
this split, COCO's "restval" images are training images.
"""

from __future__ import annotations

import json
import os

from bertgen_jax import vocab
from bertgen_jax.data.records import (BadRecord, DataError, ImageCaptions, SkipCounter,
                                      check_on_bad_record, handle_bad_record)

SPLITS = ("train", "val", "test")
_SPLIT_OF = {"train": "train", "restval": "train", "val": "val", "test": "test"}


def read_karpathy(path, split: str, *, lang: str = "en", text: str = "raw",
                  on_bad_record: str = "skip",
                  skips: SkipCounter | None = None) -> list[ImageCaptions]:
    """One record per image of `split` with all of its captions, in file order.

    `text="raw"` keeps each caption as written; `text="tokens"` joins the file's
    lower-cased tokens with spaces (the form coco-caption scores). An empty caption
    is a bad record: it is dropped (the image too if it has no other caption) and
    counted under "skip", raised under "error". So is an unknown split name.
    """
    check_on_bad_record(on_bad_record)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if lang not in vocab.LANG_TAGS:
        raise ValueError(f"lang {lang!r} is not a known language; known: {sorted(vocab.LANG_TAGS)}")
    if text not in ("raw", "tokens"):
        raise ValueError(f"text must be 'raw' or 'tokens', got {text!r}")
    skips = skips if skips is not None else SkipCounter()
    path = os.fspath(path)
    images = _load_images(path)
    records = []
    for index, image in enumerate(images):
        where = f"images[{index}]"
        if not isinstance(image, dict):
            raise DataError(path, where, None, f"expected an object, got {type(image).__name__}")
        filename = _field(image, "filename", str, path, where)
        where = f"images[{index}] ({filename})"
        split_name = _field(image, "split", str, path, where)
        image_split = _SPLIT_OF.get(split_name)
        if image_split is None:
            handle_bad_record(BadRecord("unknown split", path, where, "split",
                                        f"{split_name!r} is none of {sorted(_SPLIT_OF)}"),
                              on_bad_record, skips)
            continue
        if image_split != split:
            # Still checked, so a broken file fails whichever split is read first; its
            # bad records belong to the other split's count.
            _captions(image, text, path, where, "skip", SkipCounter())
            continue
        captions = _captions(image, text, path, where, on_bad_record, skips)
        if not captions:
            continue
        image_id = str(image["cocoid"]) if "cocoid" in image else os.path.splitext(filename)[0]
        records.append(ImageCaptions(image_id, filename, split, lang, tuple(captions)))
    return records


def _load_images(path: str) -> list:
    try:
        with open(path, "rb") as f:
            obj = json.load(f)
    except OSError as err:
        raise DataError(path, None, None, f"cannot read caption file ({err.strerror})",
                        "check the path in the config") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(path, None, None, f"is not valid JSON ({err})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("images"), list):
        raise DataError(path, None, "images", "expected a top-level object with an 'images' list")
    return obj["images"]


def _captions(image, text, path, where, on_bad_record, skips) -> list[str]:
    sentences = _field(image, "sentences", list, path, where)
    captions = []
    for number, sentence in enumerate(sentences):
        field = f"sentences[{number}].{text}"
        value = sentence.get(text) if isinstance(sentence, dict) else None
        if text == "tokens" and isinstance(value, list) and all(isinstance(t, str) for t in value):
            value = " ".join(value)
        if not isinstance(value, str):
            expected = "a string" if text == "raw" else "a list of strings"
            raise DataError(path, where, field, f"expected {expected}, got {value!r}")
        if not value.strip():
            handle_bad_record(BadRecord("empty caption", path, where, field, "caption is empty"),
                              on_bad_record, skips)
            continue
        captions.append(value.strip())
    return captions


def _field(obj: dict, name: str, kind: type, path, where):
    value = obj.get(name)
    if not isinstance(value, kind):
        raise DataError(path, where, name, f"expected {kind.__name__}, got {value!r}")
    return value
