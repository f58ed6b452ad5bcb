"""Evaluation on ToyWorld's tiny test sets with an oracle decoder: exact BLEU 100 where it sees the
right image, a drop when the images are shuffled, copy baselines, per-image captioning, files."""

import json
import shutil

import numpy as np
import pytest

from bertgen_jax import evaluate, metrics
from bertgen_jax import toyworld, vocab
from bertgen_jax.data import datasets
from bertgen_jax.data.prepare import prepare_annotations
from bertgen_jax.data.unroll import Pair

LANGS = ("en", "de", "fr", "tr")
JAVA = shutil.which("java") is not None


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    if JAVA:
        # Start the JVMs now: the English one loads its paraphrase table while ToyWorld is built.
        for lang in LANGS:
            metrics.meteor_process(metrics.meteor_command(lang)[0])
    root = tmp_path_factory.mktemp("toyworld")
    manifest = toyworld.generate(str(root), seed=0, scale="tiny", feature_dim=24)
    # A budget of 512 (BERT's positions) drops nothing: a test set must not shrink to a training budget.
    data = datasets.load(data_config(str(root / "manifest.json")), "/unused", lambda task: 512,
                         splits=("test",))
    return root, manifest, data.tokenizer, data.splits["test"]


def data_config(manifest, features_dir=""):
    from configs import multitask
    config = multitask.get_config("tiny")
    config.data.manifest, config.data.features_dir = manifest, features_dir
    return config.data


def oracle(sets):
    """A decoder that knows every test target: right (source, image) -> the reference ids (an
    image's first caption for captioning); anything else -> [STOP]-cut garbage, i.e. ""."""
    table = {}
    for s in sets:
        for p in s.pairs:
            table.setdefault((p.task, p.tgt_lang, p.image, p.src_ids.tobytes()), p.tgt_ids)
    calls = []

    def decode_fn(pairs):
        calls.append(len(pairs))
        garbage = np.array([vocab.STOP_ID, 200, 201], np.int32)
        return [table.get((p.task, p.tgt_lang, p.image, p.src_ids.tobytes()), garbage) for p in pairs]
    return decode_fn, calls


def test_eval_sets_are_the_manifest_test_streams(world):
    root, manifest, tok, sets = world
    entries = [e for e in manifest["streams"] if e["split"] == "test"]
    assert [s.name for s in sets] == [e["name"] for e in entries] and len(sets) == 18
    for s, e in zip(sets, entries):
        assert (s.task, s.src, s.tgt, s.zero_shot, s.skipped) == (e["task"], e.get("src"), e["tgt"],
                                                                  e["zero_shot"], 0)
        assert len(s.pairs) == e["count"]
        inputs, refs = evaluate.decode_inputs(s)
        if s.task == "ic":
            assert len(inputs) == e["images"] == 12 and all(len(r) == 2 for r in refs)
            assert len({p.image for p in inputs}) == 12
        else:
            assert len(inputs) == e["count"] and all(len(r) == 1 for r in refs)
    assert {s.name for s in sets if s.zero_shot} == {"ic_fr", "mmt_de-fr", "mmt_fr-de", "mt_de-fr", "mt_fr-de"}


def test_a_set_whose_images_the_store_lacks_counts_them_as_skipped_and_is_left_out(world, tmp_path, caplog):
    root, manifest, tok, _ = world
    train_files = sorted({str(root / e["file"]) for e in manifest["streams"]
                          if e["format"] == "jsonl" and e["split"] == "train"})
    prepare_annotations(train_files, str(tmp_path / "train_only"), progress=False)  # no test image in it
    data = datasets.load(data_config(str(root / "manifest.json"), str(tmp_path / "train_only")), "/unused",
                         lambda task: 512, splits=("test",))
    entries = [e for e in manifest["streams"] if e["split"] == "test"]
    for s, e in zip(data.splits["test"], entries):
        assert (len(s.pairs), s.skipped) == ((0, e["count"]) if e["format"] == "jsonl" else (e["count"], 0))
    mt = [s for s in data.splits["test"] if s.task == "mt"]
    ic = next(s for s in data.splits["test"] if s.name == "ic_en")
    decode_fn, _ = oracle(mt)
    found = evaluate.evaluate_sets(decode_fn, [ic, mt[0]], tok)
    assert [r["name"] for r in found.rows] == ["mt_en-de", "mt_en-de (copy source)"]
    assert "eval set ic_en is empty: skipped" in caplog.text


def test_image_derangement_moves_every_image_with_its_regions():
    pairs = [Pair("mmt", "de", np.array([i + 200]), np.array([5]), image=i % 5, num_regions=10 + i % 5)
             for i in range(8)]
    moved = evaluate.derange_images(pairs, seed=3)
    assert all(m.image != p.image for m, p in zip(moved, pairs))
    assert all(m.num_regions == 10 + m.image for m in moved)
    assert sorted({m.image for m in moved}) == [0, 1, 2, 3, 4]
    # Pairs sharing an image still share one after the move; the same seed gives the same move.
    assert moved[0].image == moved[5].image
    assert [m.image for m in evaluate.derange_images(pairs, seed=3)] == [m.image for m in moved]
    assert [m.src_ids[0] for m in moved] == [p.src_ids[0] for p in pairs]
    assert evaluate.derange_images(pairs[:1]) is None


def test_evaluate_sets_with_an_oracle_decoder(world, tmp_path):
    root, manifest, tok, sets = world
    decode_fn, calls = oracle(sets)
    found = evaluate.evaluate_sets(decode_fn, sets, tok, out_dir=str(tmp_path), step=7, seed=0)
    rows = found.rows
    by = {r["name"]: r for r in rows}
    samples = {x.name: x for x in found.samples}
    assert [x.name for x in found.samples] == [r["name"] for r in rows]
    visual = [s for s in sets if s.task in ("ic", "mmt")]
    copied = [s for s in sets if s.task in ("mt", "mmt")]
    assert len(rows) == len(sets) + len(visual) + len(copied) == 18 + 10 + 14
    assert calls == [len(evaluate.decode_inputs(s)[0]) for s in sets for _ in range(1 + (s in visual))]
    for s in sets:
        row = by[s.name]
        assert row["n"] == (12 if s.task == "ic" else len(s.pairs)) == 12
        assert row["bleu"] == pytest.approx(100.0, abs=1e-9) and row["bleu_lc"] == pytest.approx(100.0, abs=1e-9)
        assert row["bleu_4"] == pytest.approx(100.0, abs=1e-6) and row["rouge_l"] == pytest.approx(100.0)
        assert row["cider"] > 1.0 and row["delta_bleu"] is None
        if JAVA:  # every ToyWorld language has a METEOR here
            assert row["meteor"] == pytest.approx(100.0, abs=0.5), row["meteor_note"]
        else:
            assert row["meteor"] is None and "java" in row["meteor_note"]
        assert (row["direction"], row["zero_shot"], row["step"]) == (
            f"{s.src or 'image'}->{s.tgt}", s.zero_shot, 7)
        # What was decoded comes back for text samples: the inputs, their outputs and references.
        inputs, ref_ids = evaluate.decode_inputs(s)
        model = samples[s.name]
        assert [id(p) for p in model.inputs] == [id(p) for p in inputs] and model.refs == [[metrics.ids_to_text(tok, r) for r in rs] for rs in ref_ids]
        assert model.hyps == (tmp_path / "hyps" / "7" / f"{s.name}.txt").read_text().splitlines()
        if s in visual:
            shuffled = by[f"{s.name} (shuffled images)"]
            assert shuffled["n"] == row["n"] and shuffled["bleu"] < 60
            assert shuffled["delta_bleu"] == pytest.approx(shuffled["bleu"] - 100.0)
            moved = samples[f"{s.name} (shuffled images)"]
            assert [p.image for p in moved.inputs] == [p.image for p in evaluate.derange_images(inputs, 0)]
            assert moved.refs == model.refs
            assert moved.hyps == (tmp_path / "hyps" / "7" / f"{s.name}.shuffled.txt").read_text().splitlines()
        if s in copied:
            copy = by[f"{s.name} (copy source)"]
            hyps = [metrics.ids_to_text(tok, p.src_ids) for p in s.pairs]
            refs = [[metrics.ids_to_text(tok, p.tgt_ids)] for p in s.pairs]
            assert copy["bleu"] == pytest.approx(metrics.sacre_bleu(hyps, refs)["bleu"])
            assert copy["bleu"] < 50 and copy["delta_bleu"] == pytest.approx(copy["bleu"] - 100.0)
            assert (tmp_path / "hyps" / "7" / f"{s.name}.copy.txt").read_text().splitlines() == hyps
            assert samples[f"{s.name} (copy source)"].hyps == hyps
    # Captioning: in the shuffled run every image gets another image's caption, never "".
    assert all(x for x in (tmp_path / "hyps/7/ic_en.shuffled.txt").read_text().splitlines())
    # MMT: the oracle knows no (source, other image) pair, so every shuffled output is empty.
    assert by["mmt_en-de (shuffled images)"]["bleu"] == 0.0

    ic = next(s for s in sets if s.name == "ic_en")
    inputs, ref_ids = evaluate.decode_inputs(ic)
    hyp_lines = (tmp_path / "hyps/7/ic_en.txt").read_text().splitlines()
    assert hyp_lines == [metrics.ids_to_text(tok, p.tgt_ids) for p in inputs]
    for k in (0, 1):
        assert (tmp_path / f"hyps/7/ic_en.ref{k}.txt").read_text().splitlines() == [
            metrics.ids_to_text(tok, r[k]) for r in ref_ids]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == {"evals": [{"step": 7, "rows": json.loads(json.dumps(rows))}]}
    md = (tmp_path / "results.md").read_text()
    assert md.count("\n| ") == len(rows) + 1 and "| mmt_en-de (shuffled images) | mmt | en->de |" in md

    # A later eval adds to results.json; the same step again replaces its entry.
    few = sets[:1]
    evaluate.evaluate_sets(decode_fn, few, tok, out_dir=str(tmp_path), step=9)
    evaluate.evaluate_sets(decode_fn, few, tok, out_dir=str(tmp_path), step=9, shuffle_images=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [e["step"] for e in saved["evals"]] == [7, 9] and len(saved["evals"][1]["rows"]) == 1
    md = (tmp_path / "results.md").read_text()
    assert md.index("## step 9") < md.index("## step 7")  # newest first


def test_an_alternative_decoder_gets_a_row_beside_the_model_row(world, tmp_path):
    _, _, tok, sets = world
    decode_fn, _ = oracle(sets)
    half = lambda pairs: [ids[:len(ids) // 2] for ids in decode_fn(pairs)]  # noqa: E731
    mt = [s for s in sets if s.name == "mt_en-de"]
    rows = evaluate.evaluate_sets(decode_fn, mt, tok, out_dir=str(tmp_path), step=3, alternatives={"beam 4": half}).rows
    assert [r["name"] for r in rows] == ["mt_en-de", "mt_en-de (copy source)", "mt_en-de (beam 4)"]
    alt = rows[-1]
    hyps = [metrics.ids_to_text(tok, ids) for ids in half(mt[0].pairs)]
    assert (tmp_path / "hyps/3/mt_en-de.beam_4.txt").read_text().splitlines() == hyps
    refs = [[metrics.ids_to_text(tok, p.tgt_ids)] for p in mt[0].pairs]
    assert alt["bleu"] == pytest.approx(metrics.sacre_bleu(hyps, refs)["bleu"]) and alt["bleu"] < 60
    assert alt["delta_bleu"] == pytest.approx(alt["bleu"] - 100.0) and alt["variant"] == "beam 4"
    with pytest.raises(ValueError, match=r"names \['copy source'\] are taken"):
        evaluate.evaluate_sets(decode_fn, mt, tok, alternatives={"copy source": half})


def test_decode_fn_must_answer_every_input(world):
    _, _, tok, sets = world
    with pytest.raises(ValueError, match=r"eval set ic_en: decode_fn returned 0 outputs for 12 inputs"):
        evaluate.evaluate_sets(lambda pairs: [], sets[:1], tok)


def test_format_table_lines_up_the_rows():
    rows = [{"name": "mmt_en-de", "task": "mmt", "direction": "en->de", "zero_shot": False, "n": 12,
             "bleu": 42.2, "meteor": 61.6, "cider": 3.1415, "rouge_l": 70.0, "bleu_4": 41.0,
             "delta_bleu": None, "tgt": "de", "meteor_note": "METEOR 1.5 -l de"},
            {"name": "mmt_en-de (shuffled images)", "task": "mmt", "direction": "en->de",
             "zero_shot": False, "n": 12, "bleu": 41.1, "meteor": None, "cider": 3.0, "rouge_l": 69.0,
             "bleu_4": 40.0, "delta_bleu": -1.1, "tgt": "de", "meteor_note": "METEOR 1.5 -l de"}]
    lines = evaluate.format_table(rows).splitlines()
    assert len(lines) == 4 and len({len(x.rstrip()) for x in lines[1:]}) == 1
    assert lines[2].split() == ["mmt_en-de", "mmt", "en->de", "12", "42.20", "61.60", "3.142", "70.00",
                                "41.00", "-"]
    assert lines[3].split()[-7:] == ["12", "41.10", "-", "3.000", "69.00", "40.00", "-1.10"]
    md = evaluate.format_table(rows, markdown=True).splitlines()
    assert md[2] == "| mmt_en-de | mmt | en->de |  | 12 | 42.20 | 61.60 | 3.142 | 70.00 | 41.00 | - |"
    assert md[-1] == "METEOR: de: METEOR 1.5 -l de"
