"""What an evaluation shows as pictures: after a tiny in-process ToyWorld run, TensorBoard holds
the first test images of every captioning and MMT set (the rendered scene, with its text beside
it) and the results chart, and eval/results.png is that chart; real data shows no pictures and
says so once."""

import io
import json
import logging
import types

import numpy as np
import pytest
from PIL import Image

from bertgen_jax import eval_pictures, results_chart, toyworld
from bertgen_jax.toyworld.render import Pictures
from tests.conftest import tiny_config


STREAMS = ("ic_en", "ic_fr", "mmt_en-de", "mmt_de-fr", "mt_en-de")  # fewer sets, a faster run


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """ToyWorld tiny with a manifest of a few of its streams (zero-shot and text-only among them)."""
    root = tmp_path_factory.mktemp("toyworld")
    full = toyworld.generate(str(root), seed=0, scale="tiny", feature_dim=32, progress=False)
    few = dict(full, streams=[s for s in full["streams"] if s["name"] in STREAMS])
    (root / "few_streams.json").write_text(json.dumps(few))
    return str(root / "few_streams.json")


def events(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(logdir, size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_a_run_shows_test_pictures_with_their_text_and_the_results_chart(manifest, tmp_path, monkeypatch):
    from bertgen_jax import metrics, train
    # METEOR's JVM takes longer to start than this whole run; pictures do not depend on it.
    monkeypatch.setattr(metrics, "meteor", lambda *args, **kwargs: (None, "not run in this test"))
    config = tiny_config(manifest, **{"train.steps": 2, "train.log_every": 1, "train.checkpoint_every": 2,
                                      "eval.decode": True, "eval.batches": 0, "eval.max_sentences": 3,
                                      "eval.decode_batch": 8, "eval.samples": 1})
    config.eval.max_len = {"ic": 6, "mmt": 6, "mt": 6}
    summary = train.run(config, str(tmp_path))
    rows = summary["results"]
    corpus = manifest.rsplit("/", 1)[0]
    test_ids = [json.loads(line)["image"] for line in open(f"{corpus}/scenes_test.jsonl")][:3]
    assert test_ids == ["00000073", "00000074", "00000075"]
    visual = [r["set"] for r in rows if r["variant"] == "model" and r["task"] in ("ic", "mmt")]
    assert visual == ["ic_en", "ic_fr", "mmt_en-de", "mmt_de-fr"]  # mt_en-de: no image, no picture

    acc = events(str(tmp_path / "tensorboard"))
    want = {f"pictures/{s}/{i}" for s in visual for i in test_ids}
    assert set(acc.Tags()["images"]) == want | {"eval/results"}
    pictures = Pictures(corpus)
    for s in ("ic_en", "mmt_de-fr"):
        for image_id in test_ids:
            shown = acc.Images(f"pictures/{s}/{image_id}")
            assert [e.step for e in shown] == [2] and (shown[0].width, shown[0].height) == (640, 480)
            pixels = np.asarray(Image.open(io.BytesIO(shown[0].encoded_image_string)).convert("RGB"))
            np.testing.assert_array_equal(pixels, np.asarray(pictures(image_id)))
    texts = {t.removesuffix("/text_summary"): acc.Tensors(t)[-1].tensor_proto.string_val[0].decode()
             for t in acc.Tags()["tensors"] if t.startswith("pictures/")}
    assert set(texts) == want
    assert texts["pictures/ic_en/00000073"].startswith("**output** ")
    assert "**reference 2** " in texts["pictures/ic_en/00000073"]  # both captions of the image
    assert texts["pictures/mmt_en-de/00000073"].startswith("**input** ")

    with Image.open(tmp_path / "eval" / "results.png") as chart:
        chart.verify()  # a whole, valid PNG
    with Image.open(tmp_path / "eval" / "results.png") as chart:
        assert chart.format == "PNG" and chart.mode == "RGB"
        assert chart.size == results_chart.chart_size(rows) == (1000, 560)
        pixels = np.asarray(chart)
    assert (pixels == results_chart.ZERO_SHOT).all(-1)[400:].any()  # ic_fr, mmt_de-fr marked
    shown = acc.Images("eval/results")[-1]
    assert (shown.width, shown.height) == (1000, 560)


def test_real_data_shows_no_pictures_and_says_so_once(caplog):
    data = types.SimpleNamespace(store=object(), manifest={"streams": []}, root="/data/multi30k")
    with caplog.at_level(logging.INFO, logger="bertgen_jax.eval_pictures"):
        assert eval_pictures.picture_source(data) is None
        assert eval_pictures.picture_source(data) is None
    assert [r.getMessage() for r in caplog.records] == [
        "pictures: /data/multi30k is not a ToyWorld corpus and a run knows no image files for it; "
        "TensorBoard shows the results chart and text samples only"]
    text_only = types.SimpleNamespace(store=None, manifest={"name": "ToyWorld"}, root="/x")
    assert eval_pictures.picture_source(text_only) is None


def test_the_chart_marks_zero_shot_sets_and_keeps_its_size():
    rows = [{"set": f"mt_{k}", "variant": v, "direction": "de->fr", "zero_shot": k % 2 == 1, "bleu": b}
            for k in range(30) for v, b in (("model", 12.5 + k), ("copy source", 0.2))]
    assert results_chart.chart_size(rows) == (56 + 16 + 48 * 30, 560)
    pixels = np.asarray(results_chart.chart(rows, step=7))
    assert pixels.shape == (560, 56 + 16 + 48 * 30, 3)
    red = (pixels == results_chart.ZERO_SHOT).all(-1)
    blue = (pixels == results_chart.COLOURS["model"]).all(-1)
    assert red[400:].sum() > 0 and blue.sum() > 0  # zero-shot labels in red under the bars
