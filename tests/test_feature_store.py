"""FeatureStore: decoded detector rows in memory-mapped .npy files, whole-image row first."""

import json
import os
import pickle
import re

import numpy as np
import pytest

from bertgen_jax.data.feature_store import FILES, FeatureStore
from bertgen_jax.data.records import DataError, Regions


def regions(n, d=6, seed=0, w=500, h=333):
    rng = np.random.default_rng(seed)
    return Regions(w, h, rng.uniform(0, 300, (n, 4)).astype(np.float32),
                   rng.standard_normal((n, d)).astype(np.float32))


def images():
    """Three images with 2, 3 and 4 detector boxes."""
    return [(f"img{i}", regions(2 + i, seed=i, w=400 + i, h=300 + i)) for i in range(3)]


def expected_rows(r: Regions):
    box = np.array([[0, 0, r.image_w - 1, r.image_h - 1]], np.float32)
    mean = r.features.astype(np.float64).mean(axis=0, keepdims=True).astype(np.float32)
    return np.concatenate([box, r.boxes]), np.concatenate([mean, r.features])


def test_files_hold_whole_image_row_then_detector_rows(tmp_path):
    items = images()
    store = FeatureStore.write(tmp_path / "store", iter(items), 6, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["store"]  # no temporary directory left behind
    assert sorted(os.listdir(tmp_path / "store")) == sorted(FILES)
    umask = os.umask(0o022)
    os.umask(umask)
    assert os.stat(tmp_path / "store").st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700
    offsets = np.load(tmp_path / "store" / "offsets.npy")
    assert offsets.dtype == np.int64 and offsets.tolist() == [0, 3, 7, 12]
    features = np.load(tmp_path / "store" / "features.npy", mmap_mode="r")
    boxes = np.load(tmp_path / "store" / "boxes.npy", mmap_mode="r")
    assert isinstance(features, np.memmap) and features.dtype == np.float32
    assert features.shape == (12, 6) and boxes.shape == (12, 4)
    np.testing.assert_array_equal(np.load(tmp_path / "store" / "image_wh.npy"),
                                  [[400, 300], [401, 301], [402, 302]])
    assert json.loads((tmp_path / "store" / "ids.json").read_text()) == ["img0", "img1", "img2"]
    meta = json.loads((tmp_path / "store" / "meta.json").read_text())
    assert (meta["feature_dim"], meta["count"], meta["rows"], meta["version"]) == (6, 3, 12, 1)
    for i, (_, r) in enumerate(items):
        want_boxes, want_features = expected_rows(r)
        np.testing.assert_array_equal(boxes[offsets[i]:offsets[i + 1]], want_boxes)
        np.testing.assert_array_equal(features[offsets[i]:offsets[i + 1]], want_features)
    assert len(store) == 3


def test_whole_image_row_in_plain_numbers(tmp_path):
    r = Regions(640, 480, np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.float32),
                np.array([[1, 2, -3], [3, 6, 5]], np.float32))
    got = FeatureStore.write(tmp_path / "s", [("a", r)], progress=False).get("a")
    assert (got.image_w, got.image_h, got.num_boxes) == (640, 480, 3)
    np.testing.assert_array_equal(got.boxes, [[0, 0, 639, 479], [1, 2, 3, 4], [5, 6, 7, 8]])
    np.testing.assert_array_equal(got.features, [[2, 4, 1], [1, 2, -3], [3, 6, 5]])


def test_get_by_id_or_index(tmp_path):
    items = images()
    store = FeatureStore.write(tmp_path / "s", items, progress=False)
    assert store.feature_dim == 6 and store.ids == ["img0", "img1", "img2"]
    assert [store.index(k) for k, _ in items] == [0, 1, 2]
    assert [store.num_boxes(i) for i in range(3)] == [3, 4, 5]
    for i, (image_id, r) in enumerate(items):
        for got in (store.get(image_id), store.get(i), store[np.int64(i)]):
            want_boxes, want_features = expected_rows(r)
            assert (got.image_w, got.image_h) == (r.image_w, r.image_h)
            np.testing.assert_array_equal(got.boxes, want_boxes)
            np.testing.assert_array_equal(got.features, want_features)
            assert got.num_boxes == store.num_boxes(i)
    assert "img1" in store and "img9" not in store
    with pytest.raises(KeyError, match="image 'img9' is not in the feature store"):
        store.index("img9")
    with pytest.raises(IndexError, match="image index 3 is out of range for 3 images"):
        store.get(3)
    with pytest.raises(ValueError, match="read-only"):
        store.get(0).features[0, 0] = 1.0  # rows are shared by every reader of the map


def test_pickled_copy_maps_the_files_again(tmp_path):
    items = [(f"img{i}", regions(40, d=256, seed=i)) for i in range(4)]
    store = FeatureStore.write(tmp_path / "s", items, progress=False)
    store.get(1)  # maps opened
    data = pickle.dumps(store)
    assert len(data) < 4000  # 4 x 41 x 256 float32 = 168 kB of features are not in it
    copy = pickle.loads(data)
    assert copy._features is None and len(copy) == 4
    for i in range(4):
        np.testing.assert_array_equal(copy.get(i).features, store.get(i).features)
        np.testing.assert_array_equal(copy.get(f"img{i}").boxes, store.get(i).boxes)


@pytest.mark.parametrize("name", ["boxes.npy", "meta.json", "ids.json"])
def test_missing_file_names_it_and_the_prepare_command(tmp_path, name):
    FeatureStore.write(tmp_path / "s", images(), progress=False)
    os.remove(tmp_path / "s" / name)
    with pytest.raises(DataError, match=re.escape(
            f"{tmp_path / 's' / name}: is missing: this is not a complete feature store "
            "(build it with `python -m bertgen_jax.data.prepare --out DIR ...`)")):
        FeatureStore(tmp_path / "s")
    with pytest.raises(DataError, match="nowhere: is not a feature store directory .*prepare"):
        FeatureStore(tmp_path / "nowhere")


def test_table_disagreeing_with_meta_is_reported(tmp_path):
    FeatureStore.write(tmp_path / "s", images(), progress=False)
    np.save(tmp_path / "s" / "offsets.npy", np.array([0, 3, 7, 11], np.int64))
    with pytest.raises(DataError, match=re.escape(
            "features.npy: has shape/length (12, 6), expected (11, 6) from meta.json")):
        FeatureStore(tmp_path / "s")


def test_bad_items_name_the_image(tmp_path):
    wide = images() + [("img3", regions(2, d=7))]
    with pytest.raises(DataError, match=re.escape("image 'img3', field 'features': has width 7, "
                                                  "expected 6")):
        FeatureStore.write(tmp_path / "s", wide, progress=False)
    twice = images() + [("img0", regions(2))]
    with pytest.raises(DataError, match=re.escape("image 'img0', field 'image_id': is given twice")):
        FeatureStore.write(tmp_path / "s", twice, progress=False)
    with pytest.raises(DataError, match="no usable image to write"):
        FeatureStore.write(tmp_path / "s", [], 6, progress=False)
    assert os.listdir(tmp_path) == []  # every failed write cleaned up after itself


def test_failed_rewrite_keeps_the_old_store(tmp_path):
    FeatureStore.write(tmp_path / "s", images(), progress=False)

    def interrupted():
        yield "new0", regions(3, seed=9)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        FeatureStore.write(tmp_path / "s", interrupted(), progress=False)
    assert os.listdir(tmp_path) == ["s"]
    assert FeatureStore(tmp_path / "s").ids == ["img0", "img1", "img2"]
    replaced = FeatureStore.write(tmp_path / "s", [("new0", regions(3, seed=9))], progress=False)
    assert replaced.ids == ["new0"] and os.listdir(tmp_path) == ["s"]


def test_refuses_to_replace_a_directory_of_other_files(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=re.escape("holds files that are not part of a feature "
                                                  "store (['notes.txt'])")):
        FeatureStore.write(tmp_path / "s", images(), progress=False)
    assert os.listdir(tmp_path / "s") == ["notes.txt"]
