"""ToyWorld's files read back through the project's own readers give exactly what was generated."""

import numpy as np

from bertgen_jax import toyworld
from bertgen_jax.data.feature_store import FeatureStore
from bertgen_jax.data.jsonl_zip import JsonlZipCaptions
from bertgen_jax.data.parallel_text import read_parallel_text
from bertgen_jax.data.prepare import prepare_annotations


def test_written_corpus_reads_back_exactly(tmp_path):
    corpus = toyworld.build_corpus(seed=3, scale="tiny", feature_dim=24)
    manifest = toyworld.write_corpus(corpus, tmp_path)
    scenes = {image_id: scene for split in corpus.images.values() for image_id, scene in split}
    checked = {"jsonl": 0, "text": 0}
    for stream in manifest["streams"]:
        if stream["format"] == "jsonl":
            lines = corpus.jsonl[stream["file"]]
            langs = [lang for lang in (stream["src"], stream["tgt"]) if lang]
            lang_field = toyworld.fields(*lines_langs(stream))
            fields = {f: lang for lang, f in lang_field.items()}
            with JsonlZipCaptions(tmp_path / stream["file"], fields, on_bad_record="error") as reader:
                records = list(reader)
            assert len(records) == len(lines) == stream["count"]
            for rec, line in zip(records, lines):
                assert rec.image_id == line["image"]
                for lang in langs:
                    assert rec.captions[lang] == line[lang_field[lang]]
                det = toyworld.image_detections(corpus.seed, int(line["image"]), scenes[int(line["image"])], 24)
                np.testing.assert_array_equal(rec.regions.boxes, det["boxes"])
                np.testing.assert_array_equal(rec.regions.features, det["features"])
            checked["jsonl"] += 1
        else:
            pairs = read_parallel_text(tmp_path / stream["src_file"], tmp_path / stream["tgt_file"],
                                       on_bad_record="error")
            assert [p.src for p in pairs] == corpus.text[stream["src_file"]]
            assert [p.tgt for p in pairs] == corpus.text[stream["tgt_file"]]
            checked["text"] += 1
    assert checked["jsonl"] >= 13 and checked["text"] >= 8

    # The prepared feature store holds each image once, whole-image region first.
    files = sorted({tmp_path / s["file"] for s in manifest["streams"] if s["format"] == "jsonl"})
    store = prepare_annotations([str(f) for f in files], str(tmp_path / "store"), on_bad_record="error",
                                progress=False)
    assert len(store) == len(scenes)
    for image_id, scene in scenes.items():
        det = toyworld.image_detections(corpus.seed, image_id, scene, 24)
        got = FeatureStore(str(tmp_path / "store")).get(store.index(toyworld.image_name(image_id)))
        np.testing.assert_array_equal(got.boxes[1:], det["boxes"])
        np.testing.assert_allclose(got.features[0], det["features"].mean(0), rtol=1e-5, atol=1e-7)


def lines_langs(stream):
    """The two languages a stream's jsonl file holds (captioning files pair with English)."""
    name = stream["file"].split("_")[1]  # e.g. ic_en-tr_train.jsonl -> en-tr
    return tuple(name.split("-"))
