"""Bottom-up-attention TSV features."""

import base64
import re

import numpy as np
import pytest

from bertgen_jax.data.records import BadRecord, DataError, SkipCounter
from bertgen_jax.data.tsv_features import iter_tsv_features, load_tsv_features


def b64(array) -> str:
    return base64.b64encode(np.asarray(array, dtype="<f4").tobytes()).decode("ascii")


def images(count=3, d=8):
    rng = np.random.default_rng(0)
    return {f"{1000 + i}": (rng.standard_normal((i + 1, 4)).astype(np.float32),
                            rng.standard_normal((i + 1, d)).astype(np.float32))
            for i in range(count)}


def write(tmp_path, rows):
    path = tmp_path / "feats.tsv"
    path.write_text("".join("\t".join(map(str, row)) + "\n" for row in rows), encoding="utf-8")
    return path


def rows_of(data, w=640, h=480):
    return [[k, w, h, len(boxes), b64(boxes), b64(feats)] for k, (boxes, feats) in data.items()]


def test_round_trip_is_exact(tmp_path):
    data = images()
    loaded = load_tsv_features(write(tmp_path, rows_of(data)), feature_dim=8)
    assert list(loaded) == list(data)
    for image_id, (boxes, feats) in data.items():
        r = loaded[image_id]
        assert (r.image_w, r.image_h, r.num_boxes) == (640, 480, len(boxes))
        np.testing.assert_array_equal(r.boxes, boxes)
        np.testing.assert_array_equal(r.features, feats)
        assert r.features.dtype == np.float32 and r.classes is None


def test_rows_far_above_csv_default_field_limit(tmp_path):
    boxes = np.zeros((36, 4), np.float32)
    feats = np.arange(36 * 2048, dtype=np.float32).reshape(36, 2048)  # ~393 kB of base64
    (image_id, r), = iter_tsv_features(write(tmp_path, [["7", 10, 10, 36, b64(boxes), b64(feats)]]))
    assert image_id == "7"
    np.testing.assert_array_equal(r.features, feats)


def test_reordered_columns(tmp_path):
    boxes, feats = images(1)["1000"]
    columns = ("image_id", "image_h", "image_w", "num_boxes", "features", "boxes")
    path = write(tmp_path, [["1000", 480, 640, 1, b64(feats), b64(boxes)]])
    r = load_tsv_features(path, columns=columns)["1000"]
    assert (r.image_w, r.image_h) == (640, 480)
    np.testing.assert_array_equal(r.boxes, boxes)


def test_missing_file_is_raised_on_the_call(tmp_path):
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'no.tsv'}: cannot read feature file")):
        iter_tsv_features(tmp_path / "no.tsv")


def test_wrong_feature_length_names_line_and_field(tmp_path):
    rows = rows_of(images())
    rows[1][5] = b64(np.zeros(15))
    path = write(tmp_path, rows)
    with pytest.raises(DataError, match=re.escape(
            f"{path}, line 2 (image 1001), field 'features': holds 15 float32 values, "
            "not a multiple of num_boxes = 2")):
        load_tsv_features(path)


def test_wrong_column_count_and_duplicate_id(tmp_path):
    rows = rows_of(images())
    rows[2] = rows[2][:5]
    path = write(tmp_path, rows)
    with pytest.raises(DataError, match=re.escape(f"{path}, line 3: has 5 tab-separated columns, "
                                                  "expected 6")):
        load_tsv_features(path)
    rows = rows_of(images())
    rows[2][0] = "1000"
    path = write(tmp_path, rows)
    with pytest.raises(DataError, match=re.escape(
            f"{path}, line 3, field 'image_id': '1000' already appeared on line 1")):
        load_tsv_features(path)


def test_nan_features_and_empty_images_are_skipped_or_raised(tmp_path):
    data = images(4)
    data["1001"][1][0, 3] = np.nan
    rows = rows_of(data)
    rows[3][3:] = [0, "", ""]
    path = write(tmp_path, rows)
    skips = SkipCounter()
    assert list(load_tsv_features(path, skips=skips)) == ["1000", "1002"]
    assert skips.counts == {"non-finite features": 1, "no boxes": 1}
    with pytest.raises(BadRecord, match=re.escape(
            f"{path}, line 2 (image 1001), field 'features': contains NaN or inf")):
        load_tsv_features(path, on_bad_record="error")
