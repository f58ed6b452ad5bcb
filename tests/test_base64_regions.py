"""Decoding and checking one image's base64 float32 detector output."""

import base64

import numpy as np
import pytest

from bertgen_jax.data.base64_regions import decode_regions
from bertgen_jax.data.records import BadRecord, DataError


def b64(array) -> str:
    return base64.b64encode(np.asarray(array, dtype="<f4").tobytes()).decode("ascii")


def entry(n=3, d=5, c=2, seed=0):
    rng = np.random.default_rng(seed)
    boxes, feats, classes = (rng.standard_normal((n, k)).astype(np.float32) for k in (4, d, c))
    fields = {"image_w": 640, "image_h": "480", "num_boxes": n, "boxes": b64(boxes),
              "features": b64(feats), "classes": b64(classes)}
    return fields, boxes, feats, classes


def decode(fields, **kwargs):
    return decode_regions(fields, file="f.zip", record="member a.json", **kwargs)


def test_decodes_exact_arrays_and_sizes():
    fields, boxes, feats, classes = entry()
    regions = decode(fields, with_classes=True)
    assert (regions.image_w, regions.image_h, regions.num_boxes) == (640, 480, 3)
    assert regions.boxes.dtype == np.float32 and regions.features.shape == (3, 5)
    np.testing.assert_array_equal(regions.boxes, boxes)
    np.testing.assert_array_equal(regions.features, feats)
    np.testing.assert_array_equal(regions.classes, classes)
    assert decode(fields).classes is None
    assert decode(fields, feature_dim=5).features.shape == (3, 5)


@pytest.mark.parametrize("field,value,message", [
    ("boxes", b64(np.zeros(11)), "holds 11 float32 values, expected num_boxes\\*4 = 12"),
    ("features", b64(np.zeros(16)), "holds 16 float32 values, not a multiple of num_boxes = 3"),
    ("features", "AAAAA", "is not valid base64"),
    ("features", base64.b64encode(b"abcdef").decode(), "decodes to 6 bytes"),
    ("features", 12, "expected a base64 string, got int"),
    ("num_boxes", 2.5, "expected an integer >= 0, got 2.5"),
    ("image_w", "0", "expected an integer >= 1, got '0'"),
])
def test_malformed_fields_raise_data_error_naming_field(field, value, message):
    fields, *_ = entry()
    fields[field] = value
    with pytest.raises(DataError, match=f"^f.zip, member a.json, field '{field}': {message}") as err:
        decode(fields)
    assert not isinstance(err.value, BadRecord)


def test_feature_dim_mismatch_and_missing_field():
    fields, *_ = entry()
    with pytest.raises(DataError, match="field 'features': holds 15 .* num_boxes\\*2048 = 6144"):
        decode(fields, feature_dim=2048)
    del fields["image_h"]
    with pytest.raises(DataError, match="field 'image_h': missing"):
        decode(fields)


@pytest.mark.parametrize("field,bad,reason", [
    ("features", np.nan, "non-finite features"),
    ("features", np.inf, "non-finite features"),
    ("boxes", -np.inf, "non-finite boxes"),
])
def test_non_finite_values_are_bad_records(field, bad, reason):
    rng = np.random.default_rng(1)
    fields, *_ = entry()
    values = rng.standard_normal((3, 4 if field == "boxes" else 5)).astype(np.float32)
    values[1, 2] = bad
    fields[field] = b64(values)
    with pytest.raises(BadRecord, match=f"field '{field}': contains NaN or inf") as err:
        decode(fields)
    assert err.value.reason == reason


def test_no_boxes_is_a_bad_record():
    fields = {"image_w": 10, "image_h": 10, "num_boxes": 0, "boxes": "", "features": ""}
    with pytest.raises(BadRecord, match="field 'num_boxes': the detector found no boxes"):
        decode(fields)
