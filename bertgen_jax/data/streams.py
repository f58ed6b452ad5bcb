"""Task streams -> tokenized `Pair`s: the step between the format readers and unrolling.

A stream is one task, direction and dataset, described by a manifest entry (ToyWorld writes
them; a real-data config lists the same fields):
  {name, task: ic|mmt|mt, src (None for IC), tgt, format: jsonl|text,
   file, src_field, tgt_field       (jsonl: the original's annotations; features via a store)
   src_file, tgt_file}              (text: line-aligned parallel files)
Paths are relative to `root`. Image features come from a prepared `FeatureStore`, so no
feature is decoded here.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from bertgen_jax import vocab
from bertgen_jax.data.feature_store import FeatureStore
from bertgen_jax.data.jsonl_zip import JsonlZipCaptions
from bertgen_jax.data.parallel_text import read_parallel_text
from bertgen_jax.data.records import BadRecord, SkipCounter, handle_bad_record
from bertgen_jax.data.unroll import Pair, TooLong, fit_budget

log = logging.getLogger(__name__)


def _ids(tokenizer, text: str) -> np.ndarray:
    return np.asarray(tokenizer.encode(text, add_special_tokens=False), np.int32)


def stream_pairs(entry: dict, root: str, tokenizer, store: FeatureStore | None, budget: int, *,
                 on_bad_record: str = "skip", skips: SkipCounter | None = None) -> list[Pair]:
    """Tokenized pairs of one stream; per-record problems are skipped and counted (or raised),
    in this stream's own log line and, when given, in `skips` too."""
    own = SkipCounter()
    task, src, tgt = entry["task"], entry.get("src"), entry["tgt"]
    vocab.lang_tag_id(tgt)  # an unknown target language is a configuration error: raise now
    pairs = []
    if entry["format"] == "jsonl":
        if store is None:
            raise ValueError(f"stream {entry['name']}: a {task} stream needs a prepared feature store")
        path = os.path.join(root, entry["file"])
        fields = {entry["tgt_field"]: tgt}
        if src:
            fields[entry["src_field"]] = src
        with JsonlZipCaptions(path, fields, on_bad_record=on_bad_record, skips=own) as reader:
            entries = reader.entries
        skipped = store.skipped_problems
        for e in entries:
            where = f"line {e.line}"
            try:
                if e.image_id in skipped or e.image_id not in store:
                    why = (f"its features were skipped when the store was built: {skipped[e.image_id]}"
                           if e.image_id in skipped else "it is not in the feature store")
                    raise BadRecord("image without features", path, where, "image",
                                    f"image {e.image_id!r}: {why}")
                image = store.index(e.image_id)
                pair = Pair(task, tgt, _ids(tokenizer, e.captions[src]) if src else np.zeros(0, np.int32),
                            _ids(tokenizer, e.captions[tgt]), image, store.num_boxes(image))
                pairs.append(_checked(pair, budget, path, where))
            except BadRecord as problem:
                handle_bad_record(problem, on_bad_record, own)
    elif entry["format"] == "text":
        src_path, tgt_path = (os.path.join(root, entry[k]) for k in ("src_file", "tgt_file"))
        for n, p in enumerate(read_parallel_text(src_path, tgt_path, on_bad_record=on_bad_record,
                                                 skips=own), start=1):
            try:
                pair = Pair(task, tgt, _ids(tokenizer, p.src), _ids(tokenizer, p.tgt))
                pairs.append(_checked(pair, budget, tgt_path, f"pair {n}"))
            except BadRecord as problem:
                handle_bad_record(problem, on_bad_record, own)
    else:
        raise ValueError(f"stream {entry['name']}: unknown format {entry['format']!r} (jsonl or text)")
    if own.total:
        log.info("stream %s: %d pairs; %s", entry["name"], len(pairs), own.summary())
    if skips is not None:
        skips.merge(own)
    return pairs


def _checked(pair: Pair, budget: int, path: str, where: str) -> Pair:
    if len(pair.tgt_ids) == 0:
        raise BadRecord("empty target", path, where, "target", "tokenizes to nothing")
    try:
        fit_budget(pair, budget)
    except TooLong as err:
        raise BadRecord("too long", path, where, "target", str(err)) from None
    return pair
