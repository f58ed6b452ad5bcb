"""datasets.load: which feature store a run uses, and that a user's prepared store is never rebuilt."""

import os

import pytest

from bertgen_jax import toyworld
from bertgen_jax.data import datasets
from bertgen_jax.data.prepare import prepare_annotations
from bertgen_jax.data.records import DataError


def data_config(manifest, features_dir=""):
    from configs import multitask
    config = multitask.get_config("tiny")
    config.data.manifest, config.data.features_dir = manifest, features_dir
    return config.data


def test_a_given_store_is_used_as_it_is_and_the_default_one_is_built(tmp_path):
    root = tmp_path / "world"
    manifest = toyworld.generate(str(root), seed=0, scale="tiny", feature_dim=24, progress=False)
    files = sorted({str(root / s["file"]) for s in manifest["streams"] if s["format"] == "jsonl"})
    mine = prepare_annotations(files[:1], str(tmp_path / "mine"), progress=False)  # one file's images only
    before = {f: os.stat(tmp_path / "mine" / f).st_mtime_ns for f in os.listdir(tmp_path / "mine")}

    data = datasets.load(data_config(str(root / "manifest.json"), str(tmp_path / "mine")), "/unused",
                         lambda task: 96, progress=False)
    assert data.store.path == str(tmp_path / "mine") and len(data.store) == len(mine)
    assert {f: os.stat(tmp_path / "mine" / f).st_mtime_ns for f in os.listdir(tmp_path / "mine")} == before
    assert not (root / "features").exists()
    # Pairs whose image the given store lacks are skipped and counted, not rebuilt into it.
    assert data.skips.counts["image without features"] > 0
    # Each split keeps its own stream's count; together they are the run's.
    per_stream = [s.skipped for splits in data.splits.values() for s in splits]
    assert sum(per_stream) == data.skips.total and 0 in per_stream  # text streams need no image

    default = datasets.load(data_config(str(root / "manifest.json")), "/unused", lambda task: 96, progress=False)
    assert default.store.path == str(root / "features") and len(default.store) > len(mine)
    assert default.skips.total == 0
    assert {s.skipped for splits in default.splits.values() for s in splits} == {0}

    with pytest.raises(DataError, match="is not a feature store directory"):
        datasets.load(data_config(str(root / "manifest.json"), str(tmp_path / "nowhere")), "/unused",
                      lambda task: 96, progress=False)
