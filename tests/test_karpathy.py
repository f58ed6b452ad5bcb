"""Karpathy-split caption JSON (Flickr30k, COCO): the reader, and the file as a manifest stream."""

import json
import re

import numpy as np
import pytest

from bertgen_jax import vocab
from bertgen_jax.data import datasets
from bertgen_jax.data.feature_store import FeatureStore
from bertgen_jax.data.karpathy import read_karpathy
from bertgen_jax.data.records import BadRecord, DataError, ImageCaptions, Regions, SkipCounter
from bertgen_jax.errors import ConfigError


def sentence(raw):
    return {"raw": raw, "tokens": raw.lower().rstrip(".").split(), "imgid": 0, "sentid": 0}


IMAGES = [
    {"filename": "1000092795.jpg", "imgid": 0, "split": "train",
     "sentences": [sentence("Two young guys."), sentence("A man in green.")]},
    {"filename": "10002456.jpg", "imgid": 1, "split": "test", "sentences": [sentence("Workers.")]},
    {"filename": "COCO_val2014_000000391895.jpg", "cocoid": 391895, "imgid": 2,
     "split": "restval", "sentences": [sentence("A man riding a motorbike.")]},
    {"filename": "3.jpg", "imgid": 3, "split": "val", "sentences": [sentence("Dogs.")]},
]


def write(tmp_path, images):
    path = tmp_path / "dataset_flickr30k.json"
    path.write_text(json.dumps({"images": images, "dataset": "flickr30k"}), encoding="utf-8")
    return path


def test_splits_with_restval_in_train(tmp_path):
    path = write(tmp_path, IMAGES)
    assert read_karpathy(path, "train") == [
        ImageCaptions("1000092795", "1000092795.jpg", "train", "en",
                      ("Two young guys.", "A man in green.")),
        ImageCaptions("391895", "COCO_val2014_000000391895.jpg", "train", "en",
                      ("A man riding a motorbike.",))]
    assert read_karpathy(path, "test") == [
        ImageCaptions("10002456", "10002456.jpg", "test", "en", ("Workers.",))]
    assert [r.image_id for r in read_karpathy(path, "val")] == ["3"]
    assert read_karpathy(path, "val", text="tokens", lang="de")[0].captions == ("dogs",)


def test_empty_captions_are_dropped_and_counted_or_raised(tmp_path):
    images = json.loads(json.dumps(IMAGES))
    images[0]["sentences"][1]["raw"] = " "
    images[1]["sentences"][0]["raw"] = ""
    path = write(tmp_path, images)
    skips = SkipCounter()
    assert read_karpathy(path, "train", skips=skips)[0].captions == ("Two young guys.",)
    assert read_karpathy(path, "test", skips=skips) == []  # its only caption was empty
    assert skips.counts == {"empty caption": 2}
    with pytest.raises(BadRecord, match=re.escape(
            f"{path}, images[0] (1000092795.jpg), field 'sentences[1].raw': caption is empty")):
        read_karpathy(path, "train", on_bad_record="error")


def test_unknown_split_is_a_bad_record(tmp_path):
    images = json.loads(json.dumps(IMAGES))
    images[3]["split"] = "dev"
    path = write(tmp_path, images)
    skips = SkipCounter()
    assert read_karpathy(path, "val", skips=skips) == []
    assert skips.counts == {"unknown split": 1}
    with pytest.raises(BadRecord, match=re.escape("images[3] (3.jpg), field 'split': 'dev'")):
        read_karpathy(path, "train", on_bad_record="error")


def test_structural_problems_raise(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [', encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{path}: is not valid JSON")):
        read_karpathy(path, "train")
    path.write_text('{"annotations": []}', encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{path}, field 'images': expected a top-level")):
        read_karpathy(path, "train")
    images = json.loads(json.dumps(IMAGES))
    del images[2]["sentences"][0]["raw"]
    path = write(tmp_path, images)
    with pytest.raises(DataError, match=re.escape(
            "images[2] (COCO_val2014_000000391895.jpg), field 'sentences[0].raw': "
            "expected a string, got None")):
        read_karpathy(path, "test", on_bad_record="skip")
    with pytest.raises(ValueError, match="split must be one of"):
        read_karpathy(path, "restval")


# --- A Karpathy file as a manifest stream: captions from the JSON, features from a prepared store.

WORDS = ["Two", "young", "guys", ".", "A", "man", "in", "green", "Workers", "riding", "a", "motorbike",
         "Dogs", "dogs"]


def write_vocab(path):
    """Specials at BERTGEN's ids, [unusedN] elsewhere below 104, then WORDS from id 104 on."""
    by_id = {i: t for t, i in vocab.SPECIAL_IDS.items()}
    lines = [by_id.get(i, f"[unused{i}]") for i in range(104)] + WORDS
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_store(path, boxes):
    """A feature store of images with the given detector box counts (whole-image row added)."""
    rng = np.random.default_rng(0)
    items = [(image_id, Regions(100, 80, rng.uniform(0, 79, (n, 4)).astype(np.float32),
                                rng.normal(size=(n, 8)).astype(np.float32)))
             for image_id, n in boxes.items()]
    return FeatureStore.write(path, items, progress=False)


def karpathy_world(tmp_path, streams):
    images = json.loads(json.dumps(IMAGES))
    images.append({"filename": "4.jpg", "imgid": 4, "split": "test", "sentences": [sentence("Dogs.")]})
    write(tmp_path, images)
    write_vocab(tmp_path / "vocab.txt")
    # Image "4" is left out of the store: its caption is skipped and counted.
    store = write_store(tmp_path / "store", {"1000092795": 3, "10002456": 1, "391895": 5, "3": 2})
    (tmp_path / "manifest.json").write_text(json.dumps({"vocab": "vocab.txt", "streams": streams}))
    from configs import multitask
    data = multitask.get_config("tiny").data
    data.manifest, data.features_dir = str(tmp_path / "manifest.json"), str(tmp_path / "store")
    return data, store


def stream(name, split, **extra):
    return {"name": name, "task": "ic", "src": None, "tgt": "en", "split": split, "format": "karpathy",
            "file": "dataset_flickr30k.json", **extra}


def test_a_karpathy_stream_gives_one_pair_per_caption_with_the_store_image(tmp_path):
    data, store = karpathy_world(tmp_path, [
        stream("ic_en", "train"), stream("ic_en", "test"),
        stream("ic_en_val", "test", karpathy_split="val", text="tokens", zero_shot=True)])
    loaded = datasets.load(data, "/unused", lambda task: 64, progress=False)
    ids = lambda text: [104 + WORDS.index(w) for w in text.split()]  # noqa: E731
    view = lambda s: [(p.task, p.tgt_lang, p.src_ids.tolist(), p.tgt_ids.tolist(), store.ids[p.image],  # noqa: E731
                       p.num_regions) for p in s.pairs]
    (train,) = loaded.splits["train"]
    assert (train.name, train.task, train.src, train.tgt, train.zero_shot, train.skipped) == (
        "ic_en", "ic", None, "en", False, 0)
    assert view(train) == [("ic", "en", [], ids("Two young guys ."), "1000092795", 4),
                           ("ic", "en", [], ids("A man in green ."), "1000092795", 4),
                           ("ic", "en", [], ids("A man riding a motorbike ."), "391895", 6)]
    assert all(p.src_ids.dtype == p.tgt_ids.dtype == np.int32 for p in train.pairs)
    test, val = loaded.splits["test"]
    assert view(test) == [("ic", "en", [], ids("Workers ."), "10002456", 2)]
    assert test.skipped == 1 and loaded.skips.counts == {"image without features": 1}
    assert loaded.skips.first["image without features"] == (
        f"{tmp_path / 'dataset_flickr30k.json'}, image 4.jpg, field 'image': "
        "image '4': it is not in the feature store")
    assert (val.name, val.zero_shot, val.skipped) == ("ic_en_val", True, 0)
    assert view(val) == [("ic", "en", [], ids("dogs"), "3", 3)]


def test_a_karpathy_stream_needs_a_prepared_store_and_the_captioning_task(tmp_path):
    data, _ = karpathy_world(tmp_path, [stream("ic_en", "train")])
    data.features_dir = ""
    with pytest.raises(ConfigError, match=re.escape(
            "streams ['ic_en'] have format 'karpathy', whose features come from a store you prepare")):
        datasets.load(data, "/unused", lambda task: 64)
    data, _ = karpathy_world(tmp_path, [dict(stream("mmt_en", "train"), task="mmt", src="de")])
    with pytest.raises(ValueError, match=re.escape(
            "stream mmt_en: format 'karpathy' holds captions only; give task 'ic' and src null "
            "(got task 'mmt', src 'de')")):
        datasets.load(data, "/unused", lambda task: 64)
