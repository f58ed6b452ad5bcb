"""The original's JSON-lines annotations with per-image feature JSON inside a zip."""

import base64
import json
import pickle
import re
import zipfile

import numpy as np
import pytest

from bertgen_jax.data.jsonl_zip import JsonlZipCaptions
from bertgen_jax.data.records import BadRecord, DataError, SkipCounter

CAPTIONS = [("Two young guys with shaggy hair.", "Zwei junge Männer mit zotteligem Haar."),
            ("A café in Zürich.", "Ein Café in Zürich."),
            ("Dogs run.", "Hunde rennen.")]


def b64(array) -> str:
    return base64.b64encode(np.asarray(array, dtype="<f4").tobytes()).decode("ascii")


def image(n, d=6, c=3, seed=0, w=500, h=333):
    rng = np.random.default_rng(seed)
    arrays = {k: rng.standard_normal((n, width)).astype(np.float32)
              for k, width in (("boxes", 4), ("features", d), ("classes", c))}
    member = {"image_w": w, "image_h": h, "num_boxes": n, **{k: b64(v) for k, v in arrays.items()}}
    return member, arrays


def write(tmp_path, lines, members, zip_name="train_frcnn.zip"):
    """Annotation file in tmp_path/ann, feature zip beside it (stored, as the original's)."""
    (tmp_path / "ann").mkdir(exist_ok=True)
    with zipfile.ZipFile(tmp_path / "ann" / zip_name, "w", zipfile.ZIP_STORED) as z:
        for name, member in members.items():
            z.writestr(name, member if isinstance(member, str) else json.dumps(member))
    path = tmp_path / "ann" / "train.json"
    path.write_text("\n".join(l if isinstance(l, str) else json.dumps(l, ensure_ascii=False)
                              for l in lines) + "\n", encoding="utf-8")
    return path


def line(i, en=None, de=None, frcnn=None):
    return {"image": f"{i}.jpg", "frcnn": frcnn or f"train_frcnn.zip@/{i:08d}.json",
            "caption_en": CAPTIONS[i][0] if en is None else en,
            "caption_de": CAPTIONS[i][1] if de is None else de}


def dataset():
    """Three annotation lines, image i having 2 + i boxes of 6-d features."""
    members, arrays = {}, []
    for i in range(3):
        members[f"{i:08d}.json"], arr = image(n=2 + i, seed=i)
        arrays.append(arr)
    return [line(i) for i in range(3)], members, arrays


def test_round_trip_is_exact(tmp_path):
    lines, members, arrays = dataset()
    with JsonlZipCaptions(write(tmp_path, lines, members), with_classes=True) as source:
        records = list(source)
        assert len(source) == 3 and source.skips.total == 0
    for i, (record, arr) in enumerate(zip(records, arrays)):
        assert record.image_id == f"{i}.jpg"
        assert record.captions == {"en": CAPTIONS[i][0], "de": CAPTIONS[i][1]}
        r = record.regions
        assert (r.image_w, r.image_h, r.num_boxes) == (500, 333, 2 + i)
        assert r.features.dtype == np.float32 and r.features.shape == (2 + i, 6)
        for key in ("boxes", "features", "classes"):
            np.testing.assert_array_equal(getattr(r, key), arr[key])


def test_field_mapping_names_the_real_language(tmp_path):
    lines, members, _ = dataset()
    source = JsonlZipCaptions(write(tmp_path, lines, members), {"caption_de": "fr"})
    assert source[1].captions == {"fr": "Ein Café in Zürich."}
    assert source[1].regions.classes is None
    with pytest.raises(ValueError, match="fields\\['caption_de'\\] = 'xx' is not a known language"):
        JsonlZipCaptions(write(tmp_path, lines, members), {"caption_de": "xx"})


def test_copies_for_worker_processes_reopen_the_zip(tmp_path):
    lines, members, arrays = dataset()
    source = JsonlZipCaptions(write(tmp_path, lines, members))
    copy = pickle.loads(pickle.dumps(source))
    source.close()
    np.testing.assert_array_equal(copy[2].regions.features, arrays[2]["features"])
    assert len(copy) == 3


def expect_error(path, record, field, problem):
    return re.escape(f"{path}, {record}, field '{field}': ") + problem


def test_missing_zip_names_annotation_line_and_frcnn(tmp_path):
    lines, members, _ = dataset()
    lines[1]["frcnn"] = "val_frcnn.zip@/00000001.json"
    path = write(tmp_path, lines, members)
    with pytest.raises(DataError, match=expect_error(path, "line 2", "frcnn",
                                                     "cannot open feature zip .*val_frcnn.zip")):
        JsonlZipCaptions(path)


def test_missing_member_names_annotation_line_and_frcnn(tmp_path):
    lines, members, _ = dataset()
    del members["00000002.json"]
    path = write(tmp_path, lines, members)
    with pytest.raises(DataError, match=expect_error(path, "line 3", "frcnn",
                                                     "member '00000002.json' is not in")):
        JsonlZipCaptions(path)


def test_frcnn_without_zip_separator(tmp_path):
    lines, members, _ = dataset()
    lines[0]["frcnn"] = "00000000.json"
    path = write(tmp_path, lines, members)
    with pytest.raises(DataError, match=expect_error(path, "line 1", "frcnn",
                                                     "expected 'NAME.zip@/MEMBER'")):
        JsonlZipCaptions(path)


def test_malformed_json_line_names_file_and_line(tmp_path):
    lines, members, _ = dataset()
    lines[2] = '{"image": "2.jpg", "frcnn": '
    path = write(tmp_path, lines, members)
    with pytest.raises(DataError, match=re.escape(f"{path}, line 3: is not valid JSON")):
        JsonlZipCaptions(path)


def test_missing_caption_field_is_structural(tmp_path):
    lines, members, _ = dataset()
    del lines[0]["caption_de"]
    path = write(tmp_path, lines, members)
    with pytest.raises(DataError, match=expect_error(path, "line 1", "caption_de",
                                                     "expected a caption string, got None")):
        JsonlZipCaptions(path, on_bad_record="skip")


def test_wrong_array_length_names_member_and_field(tmp_path):
    lines, members, _ = dataset()
    members["00000001.json"]["boxes"] = b64(np.zeros(7))
    source = JsonlZipCaptions(write(tmp_path, lines, members))
    with pytest.raises(DataError, match=re.escape(
            "member 00000001.json (from train.json line 2), field 'boxes': holds 7 float32 "
            "values, expected num_boxes*4 = 12")) as err:
        list(source)  # structural: raised under the default "skip" policy too
    assert err.value.file.endswith("train_frcnn.zip")
    with pytest.raises(DataError, match="field 'features': holds 12 .*num_boxes\\*2048 = 4096"):
        JsonlZipCaptions(write(tmp_path, lines, members), feature_dim=2048)[0]


def test_nan_features_are_skipped_and_counted_or_raised(tmp_path):
    lines, members, _ = dataset()
    member, arr = image(n=3, seed=5)
    arr["features"][0, 0] = np.nan
    member["features"] = b64(arr["features"])
    members["00000001.json"] = member
    path = write(tmp_path, lines, members)
    skips = SkipCounter()
    kept = list(JsonlZipCaptions(path, skips=skips))
    assert [r.image_id for r in kept] == ["0.jpg", "2.jpg"]
    assert skips.counts == {"non-finite features": 1}
    assert "member 00000001.json" in skips.summary()
    with pytest.raises(BadRecord, match="member 00000001.json .*field 'features': contains NaN"):
        list(JsonlZipCaptions(path, on_bad_record="error"))


def test_empty_caption_is_skipped_at_load_or_raised(tmp_path):
    lines, members, _ = dataset()
    lines[0]["caption_de"] = "   "
    path = write(tmp_path, lines, members)
    source = JsonlZipCaptions(path)
    assert len(source) == 2 and source[0].image_id == "1.jpg"
    assert source.skips.counts == {"empty caption": 1}
    assert len(JsonlZipCaptions(path, {"caption_en": "en"})) == 3  # German not asked for
    with pytest.raises(BadRecord, match=expect_error(path, "line 1", "caption_de",
                                                     "caption is empty")):
        JsonlZipCaptions(path, on_bad_record="error")
