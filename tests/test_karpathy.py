"""Karpathy-split caption JSON (Flickr30k, COCO)."""

import json
import re

import pytest

from bertgen_jax.data.karpathy import read_karpathy
from bertgen_jax.data.records import BadRecord, DataError, ImageCaptions, SkipCounter


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
