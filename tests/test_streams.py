"""Streams: ToyWorld's manifest entries -> tokenized pairs with the right fields and images."""

import copy
import json
import logging

import numpy as np
import pytest

from bertgen_jax import vocab
from bertgen_jax import toyworld
from bertgen_jax.data.prepare import prepare_annotations
from bertgen_jax.data.records import DataError, SkipCounter
from bertgen_jax.data.streams import stream_pairs


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("toyworld")
    manifest = toyworld.generate(str(root), seed=0, scale="tiny", feature_dim=24)
    files = sorted({str(root / s["file"]) for s in manifest["streams"] if s["format"] == "jsonl"})
    store = prepare_annotations(files, str(root / "store"), on_bad_record="error", progress=False)
    return root, manifest, store, vocab.load_tokenizer(str(root / manifest["vocab"]))


def detok(tokenizer, ids):
    return " ".join(tokenizer.convert_ids_to_tokens(ids.tolist())).replace(" ##", "")


def words(tokenizer, text):
    """The text split into words and punctuation, as the tokenizer does before WordPiece."""
    return " ".join(w for w, _ in tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text))


def test_every_stream_tokenizes_with_the_right_fields_and_images(world):
    root, manifest, store, tok = world
    for entry in manifest["streams"]:
        pairs = stream_pairs(entry, str(root), tok, store, budget=96 if entry["task"] != "mt" else 512,
                             on_bad_record="error")
        assert len(pairs) == entry["count"], entry["name"]
        if entry["format"] == "jsonl":
            lines = [json.loads(x) for x in (root / entry["file"]).read_text().splitlines()]
        else:
            srcs = (root / entry["src_file"]).read_text().splitlines()
            tgts = (root / entry["tgt_file"]).read_text().splitlines()
            lines = [{"s": s, "t": t} for s, t in zip(srcs, tgts)]
        for pair, line in zip(pairs, lines):
            assert pair.task == entry["task"] and pair.tgt_lang == entry["tgt"]
            assert not np.any(pair.tgt_ids == vocab.UNK_ID) and not np.any(pair.src_ids == vocab.UNK_ID)
            tgt = line[entry["tgt_field"]] if entry["format"] == "jsonl" else line["t"]
            assert detok(tok, pair.tgt_ids) == words(tok, tgt)
            if entry["task"] == "ic":
                assert len(pair.src_ids) == 0
            else:
                src = line[entry["src_field"]] if entry["format"] == "jsonl" else line["s"]
                assert detok(tok, pair.src_ids) == words(tok, src)
            if entry["task"] == "mt":
                assert pair.image == -1
            else:
                assert store.ids[pair.image] == line["image"]
                assert pair.num_regions == store.num_boxes(pair.image)


def test_pairs_over_the_budget_are_skipped_and_counted_or_raised(world):
    root, manifest, store, tok = world
    entry = next(s for s in manifest["streams"] if s["name"] == "mmt_en-de" and s["split"] == "train")
    skips = SkipCounter()
    pairs = stream_pairs(entry, str(root), tok, store, budget=30, skips=skips)
    assert skips.counts["too long"] > 0 and len(pairs) + skips.total == entry["count"]
    assert all(6 + len(p.tgt_ids) + 1 <= 30 for p in pairs)
    with pytest.raises(DataError, match=r"mmt_en-de_train\.jsonl, line \d+, field 'target'"):
        stream_pairs(entry, str(root), tok, store, budget=30, on_bad_record="error")


def test_each_stream_logs_its_own_skips_and_the_shared_counter_sums_them(world, caplog):
    root, manifest, store, tok = world
    train = {s["name"]: s for s in manifest["streams"] if s["split"] == "train"}
    shared = SkipCounter()
    with caplog.at_level(logging.INFO, logger="bertgen_jax.data.streams"):
        first = stream_pairs(train["mmt_en-de"], str(root), tok, store, budget=30, skips=shared)
        stream_pairs(train["mt_en-de"], str(root), tok, store, budget=512, skips=shared)
    skipped = train["mmt_en-de"]["count"] - len(first)
    assert skipped > 0 and shared.total == skipped
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"stream mmt_en-de: {len(first)} pairs; skipped {skipped} records: "
                     f"{skipped} too long (first: {shared.first['too long']})"]


def test_a_pair_whose_image_was_skipped_by_prepare_says_why(world):
    root, manifest, store, tok = world
    entry = next(s for s in manifest["streams"] if s["name"] == "ic_en" and s["split"] == "train")
    image = json.loads((root / entry["file"]).read_text().splitlines()[0])["image"]
    damaged = copy.copy(store)
    damaged.meta = dict(store.meta, skipped=[{"image_id": image, "reason": "bad value",
                                              "problem": "x.zip@/a.json: field 'features': contains NaN"}])
    with pytest.raises(DataError, match=r"line 1, field 'image'.*skipped when the store was built.*contains NaN"):
        stream_pairs(entry, str(root), tok, damaged, budget=96, on_bad_record="error")


def test_visual_streams_need_a_store_and_known_languages(world):
    root, manifest, store, tok = world
    entry = next(s for s in manifest["streams"] if s["task"] == "ic")
    with pytest.raises(ValueError, match="needs a prepared feature store"):
        stream_pairs(entry, str(root), tok, None, budget=96)
    with pytest.raises(ValueError, match="unknown target language 'xx'"):
        stream_pairs(dict(entry, tgt="xx"), str(root), tok, store, budget=96)
    with pytest.raises(ValueError, match=r"^stream ic_en: unknown format 'csv'; expected one of "
                                         r"\('jsonl', 'karpathy', 'text'\)$"):
        stream_pairs(dict(entry, format="csv"), str(root), tok, store, budget=96)
