"""Preparing FeatureStores from annotation files + feature zips and from bottom-up TSVs."""

import base64
import json
import logging
import os
import re
import zipfile

import numpy as np
import pytest

from bertgen_jax.data import jsonl_zip, prepare
from bertgen_jax.data.feature_store import FeatureStore
from bertgen_jax.data.prepare import main, prepare_annotations, prepare_tsv
from bertgen_jax.data.records import BadRecord, DataError


def b64(array) -> str:
    return base64.b64encode(np.asarray(array, dtype="<f4").tobytes()).decode("ascii")


def arrays(i, d=6):
    """Image i: 2 + i boxes of d-dim features, size (500 + i) x (300 + i)."""
    rng = np.random.default_rng(i)
    return (500 + i, 300 + i, rng.uniform(0, 200, (2 + i, 4)).astype(np.float32),
            rng.standard_normal((2 + i, d)).astype(np.float32))


def member(w, h, boxes, features):
    return {"image_w": w, "image_h": h, "num_boxes": len(boxes), "boxes": b64(boxes),
            "features": b64(features)}


def write_annotations(tmp_path, images=None):
    """train.json names images 0, 1, 0, 2 and val.json 1, 3; all features in one zip."""
    images = images or {i: arrays(i) for i in range(4)}
    with zipfile.ZipFile(tmp_path / "frcnn.zip", "w", zipfile.ZIP_STORED) as z:
        for i, image in images.items():
            z.writestr(f"{i:08d}.json", json.dumps(member(*image)))

    def lines(name, ids):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"image": f"{i}.jpg", "frcnn": f"frcnn.zip@/{i:08d}.json",
                                            "caption_en": "A dog.", "caption_de": ""}) + "\n"
                                for i in ids), encoding="utf-8")
        return path

    return [lines("train.json", [0, 1, 0, 2]), lines("val.json", [1, 3])], images


def assert_store_holds(store, images):
    """Every image's rows are [whole-image box, mean feature] + its detector rows, exactly."""
    offset = 0
    assert store.offsets[0] == 0
    for image_id, (w, h, boxes, features) in images.items():
        i = store.index(image_id)
        got = store.get(i)
        assert (got.image_w, got.image_h) == (w, h)
        np.testing.assert_array_equal(got.boxes, np.concatenate([[[0, 0, w - 1, h - 1]], boxes]))
        mean = features.astype(np.float64).mean(axis=0).astype(np.float32)
        np.testing.assert_array_equal(got.features, np.concatenate([mean[None], features]))
        assert store.offsets[i] == offset and store.num_boxes(i) == len(boxes) + 1
        offset += len(boxes) + 1
    assert store.offsets[-1] == offset == store.meta["rows"]


@pytest.fixture
def count_decodes(monkeypatch):
    calls = []

    def counting(entry, **kwargs):
        calls.append(kwargs["record"])
        return decode(entry, **kwargs)

    decode = jsonl_zip.decode_regions
    monkeypatch.setattr(jsonl_zip, "decode_regions", counting)
    return calls


def test_annotations_each_image_decoded_once(tmp_path, count_decodes):
    files, images = write_annotations(tmp_path)
    store = prepare_annotations(files, tmp_path / "store", progress=False)
    assert len(count_decodes) == 4  # six lines, four distinct images
    assert store.ids == ["0.jpg", "1.jpg", "2.jpg", "3.jpg"]  # first-mention order
    assert_store_holds(store, {f"{i}.jpg": image for i, image in images.items()})
    assert store.meta["skipped"] == [] and store.meta["inputs"] == [str(f) for f in files]
    recorded = [s["path"] for s in store.meta["sources"]]
    assert recorded == [str(files[0]), str(files[1]), str(tmp_path / "frcnn.zip")]


def test_second_run_is_skipped_until_a_source_changes(tmp_path, count_decodes, caplog):
    files, _ = write_annotations(tmp_path)
    out = tmp_path / "store"
    prepare_annotations(files, out, progress=False)
    before = {name: os.stat(out / name).st_mtime_ns for name in os.listdir(out)}
    caplog.set_level(logging.INFO, logger=prepare.__name__)
    again = prepare_annotations(files, out, progress=False)
    assert len(count_decodes) == 4 and len(again) == 4
    assert {name: os.stat(out / name).st_mtime_ns for name in os.listdir(out)} == before
    assert f"{out} is up to date with its sources (4 images); not rebuilding" in caplog.text

    zip_stat = os.stat(tmp_path / "frcnn.zip")
    os.utime(tmp_path / "frcnn.zip", ns=(zip_stat.st_atime_ns, zip_stat.st_mtime_ns + 10**9))
    prepare_annotations(files, out, progress=False)
    assert len(count_decodes) == 8  # the zip changed: everything decoded again
    prepare_annotations(files, out, progress=False, feature_dim=6)
    assert len(count_decodes) == 12  # other settings: rebuilt
    prepare_annotations(files[:1], out, progress=False, feature_dim=6)
    assert len(count_decodes) == 15  # other inputs: rebuilt
    assert os.listdir(tmp_path / "store") and sorted(p.name for p in tmp_path.iterdir()) == [
        "frcnn.zip", "store", "train.json", "val.json"]


def test_nan_image_is_skipped_listed_and_counted_or_raised(tmp_path, caplog):
    images = {i: arrays(i) for i in range(4)}
    images[1][3][1, 2] = np.nan
    files, _ = write_annotations(tmp_path, images)
    caplog.set_level(logging.INFO, logger=prepare.__name__)
    store = prepare_annotations(files, tmp_path / "store", progress=False)
    assert store.ids == ["0.jpg", "2.jpg", "3.jpg"]
    assert_store_holds(store, {f"{i}.jpg": images[i] for i in (0, 2, 3)})
    (entry,) = store.meta["skipped"]
    assert (entry["image_id"], entry["reason"]) == ("1.jpg", "non-finite features")
    assert "member 00000001.json" in entry["problem"] and store.skipped_ids == ["1.jpg"]
    assert "skipped 1 records: 1 non-finite features" in caplog.text
    assert "skipped 1 records" in store.meta["skip_summary"]
    with pytest.raises(KeyError, match="'1.jpg' .* skipped when the store was built"):
        store.index("1.jpg")

    # The skip-built store is not "up to date" for a run that must stop at bad images.
    with pytest.raises(BadRecord, match=re.escape(
            "member 00000001.json (from train.json line 2), field 'features': contains NaN")):
        prepare_annotations(files, tmp_path / "store", "error", progress=False)
    assert FeatureStore(tmp_path / "store").ids == ["0.jpg", "2.jpg", "3.jpg"]  # old one kept
    with pytest.raises(BadRecord):
        prepare_annotations(files, tmp_path / "strict", "error", progress=False)
    assert not (tmp_path / "strict").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial dirs


def test_one_id_with_two_feature_members_is_an_error(tmp_path):
    files, _ = write_annotations(tmp_path)
    with open(files[1], "a", encoding="utf-8") as f:
        f.write(json.dumps({"image": "0.jpg", "frcnn": "frcnn.zip@/00000002.json"}) + "\n")
    with pytest.raises(DataError, match=re.escape(f"{files[1]}, line 3, field 'frcnn': image "
                                                  "'0.jpg' is ") + ".*00000002.json here but .*"
                                        + re.escape(f"00000000.json on {files[0]} line 1")):
        prepare_annotations(files, tmp_path / "store", progress=False)


def write_tsv(path, rows):
    path.write_text("".join("\t".join(map(str, row)) + "\n" for row in rows), encoding="utf-8")
    return path


def tsv_rows(ids):
    return [[f"{1000 + i}", w, h, len(boxes), b64(boxes), b64(features)]
            for i in ids for w, h, boxes, features in [arrays(i, d=8)]]


def test_tsv_files_with_a_nan_image(tmp_path):
    rows = tsv_rows(range(4))
    w, h, boxes, features = arrays(1, d=8)
    features[0, 0] = np.inf
    rows[1][5] = b64(features)
    files = [write_tsv(tmp_path / "f.tsv.0", rows[:2]), write_tsv(tmp_path / "f.tsv.1", rows[2:])]
    store = prepare_tsv(files, tmp_path / "store", progress=False)
    assert store.ids == ["1000", "1002", "1003"] and store.feature_dim == 8
    assert_store_holds(store, {f"{1000 + i}": arrays(i, d=8) for i in (0, 2, 3)})
    assert [(s["image_id"], s["reason"]) for s in store.meta["skipped"]] == [
        ("1001", "non-finite features")]
    with pytest.raises(BadRecord, match=re.escape(f"{files[0]}, line 2 (image 1001), field "
                                                  "'features': contains NaN or inf")):
        prepare_tsv(files, tmp_path / "strict", "error", progress=False)
    with pytest.raises(DataError, match=re.escape("image '1000', field 'image_id': is given twice")):
        prepare_tsv([files[0], write_tsv(tmp_path / "f.tsv.2", rows[:1])], tmp_path / "dup",
                    progress=False)


def test_command_line(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger=prepare.__name__)
    tsv = write_tsv(tmp_path / "f.tsv", tsv_rows(range(3)))
    out = tmp_path / "store"
    assert main(["--tsv", str(tsv), "--out", str(out), "--feature-dim", "8"]) == 0
    assert FeatureStore(out).ids == ["1000", "1001", "1002"]
    assert f"wrote 3 images (12 rows of 8 features) to {out}" in caplog.text
    assert "skipped 0 records" in caplog.text
    assert main(["--tsv", str(tsv), "--out", str(out), "--feature-dim", "8"]) == 0
    assert "is up to date" in caplog.text
    assert main(["--tsv", str(tsv), "--out", str(tmp_path / "s2"), "--feature-dim", "9"]) == 1
    assert re.search(r"error: .*f\.tsv, line 1 \(image 1000\), field 'features': holds 16 "
                     r"float32 values, expected num_boxes\*9 = 18", capsys.readouterr().err)
    files, _ = write_annotations(tmp_path)
    assert main(["--annotations", *map(str, files), "--out", str(tmp_path / "ann"),
                 "--on-bad-record", "error"]) == 0
    assert len(FeatureStore(tmp_path / "ann")) == 4
