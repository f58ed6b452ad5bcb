"""Task streams -> tokenized `Pair`s: the step between the format readers and unrolling.

A stream is one task, direction and dataset, described by a manifest entry (ToyWorld writes
them; a real-data config lists the same fields):
  {name, task: ic|mmt|mt, src (None for IC), tgt, split, format: jsonl|karpathy|text,
   file, src_field, tgt_field       (jsonl: the original's annotations; features via a store)
   file, karpathy_split?, text?     (karpathy: IC captions of one Karpathy split; features via a store)
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
from bertgen_jax.data.karpathy import read_karpathy
from bertgen_jax.data.parallel_text import read_parallel_text
from bertgen_jax.data.records import BadRecord, SkipCounter, handle_bad_record
from bertgen_jax.data.unroll import Pair, TooLong, fit_budget

log = logging.getLogger(__name__)

FORMATS = ("jsonl", "karpathy", "text")
VISUAL_FORMATS = ("jsonl", "karpathy")  # formats whose images come from the feature store


def _ids(tokenizer, text: str) -> np.ndarray:
    return np.asarray(tokenizer.encode(text, add_special_tokens=False), np.int32)


def stream_pairs(entry: dict, root: str, tokenizer, store: FeatureStore | None, budget: int, *,
                 on_bad_record: str = "skip", skips: SkipCounter | None = None) -> list[Pair]:
    """Tokenized pairs of one stream; per-record problems are skipped and counted (or raised),
    in this stream's own log line and, when given, in `skips` too."""
    own = SkipCounter()
    fmt = entry["format"]
    vocab.lang_tag_id(entry["tgt"])  # an unknown target language is a configuration error: raise now
    if fmt not in FORMATS:
        raise ValueError(f"stream {entry['name']}: unknown format {fmt!r}; expected one of {FORMATS}")
    if fmt in VISUAL_FORMATS and store is None:
        raise ValueError(f"stream {entry['name']}: a {entry['task']} stream needs a prepared feature store")
    read = {"jsonl": _jsonl, "karpathy": _karpathy, "text": _text}[fmt]
    pairs = []
    for make, path, where in read(entry, root, tokenizer, store, on_bad_record, own):
        try:
            pairs.append(_checked(make(), budget, path, where))
        except BadRecord as problem:
            handle_bad_record(problem, on_bad_record, own)
    if own.total:
        log.info("stream %s: %d pairs; %s", entry["name"], len(pairs), own.summary())
    if skips is not None:
        skips.merge(own)
    return pairs


# Each reader below yields (make, path, where) per record: `make()` builds the Pair or raises
# BadRecord, so one loop in stream_pairs applies the budget and the bad-record policy to all.

def _jsonl(entry, root, tokenizer, store, on_bad_record, own):
    task, src, tgt = entry["task"], entry.get("src"), entry["tgt"]
    path = os.path.join(root, entry["file"])
    fields = {entry["tgt_field"]: tgt}
    if src:
        fields[entry["src_field"]] = src
    with JsonlZipCaptions(path, fields, on_bad_record=on_bad_record, skips=own) as reader:
        entries = reader.entries
    skipped = store.skipped_problems
    for e in entries:
        where = f"line {e.line}"

        def make(e=e, where=where):
            image = _image(store, skipped, e.image_id, path, where)
            src_ids = _ids(tokenizer, e.captions[src]) if src else np.zeros(0, np.int32)
            return Pair(task, tgt, src_ids, _ids(tokenizer, e.captions[tgt]), image, store.num_boxes(image))
        yield make, path, where


def _karpathy(entry, root, tokenizer, store, on_bad_record, own):
    # Karpathy files hold captions in one language and no source side: captioning only.
    if entry["task"] != "ic" or entry.get("src"):
        raise ValueError(f"stream {entry['name']}: format 'karpathy' holds captions only; give "
                         f"task 'ic' and src null (got task {entry['task']!r}, src {entry.get('src')!r})")
    tgt, path = entry["tgt"], os.path.join(root, entry["file"])
    # The manifest split names the Karpathy split unless `karpathy_split` picks another
    # (e.g. Karpathy's "val" images as a test stream).
    records = read_karpathy(path, entry.get("karpathy_split") or entry["split"], lang=tgt,
                            text=entry.get("text", "raw"), on_bad_record=on_bad_record, skips=own)
    skipped = store.skipped_problems
    for r in records:
        where = f"image {r.filename}"
        for caption in r.captions:
            def make(r=r, caption=caption, where=where):
                image = _image(store, skipped, r.image_id, path, where)
                return Pair("ic", tgt, np.zeros(0, np.int32), _ids(tokenizer, caption), image,
                            store.num_boxes(image))
            yield make, path, where


def _text(entry, root, tokenizer, store, on_bad_record, own):
    src_path, tgt_path = (os.path.join(root, entry[k]) for k in ("src_file", "tgt_file"))
    for n, p in enumerate(read_parallel_text(src_path, tgt_path, on_bad_record=on_bad_record,
                                             skips=own), start=1):
        yield (lambda p=p: Pair(entry["task"], entry["tgt"], _ids(tokenizer, p.src),
                                _ids(tokenizer, p.tgt))), tgt_path, f"pair {n}"


def _image(store: FeatureStore, skipped: dict[str, str], image_id: str, path: str, where: str) -> int:
    """The store index of a record's image; BadRecord when the store lacks it (`skipped`:
    the store's skipped_problems, looked up once per stream rather than per record)."""
    if image_id in skipped or image_id not in store:
        why = (f"its features were skipped when the store was built: {skipped[image_id]}"
               if image_id in skipped else "it is not in the feature store")
        raise BadRecord("image without features", path, where, "image", f"image {image_id!r}: {why}")
    return store.index(image_id)


def _checked(pair: Pair, budget: int, path: str, where: str) -> Pair:
    if len(pair.tgt_ids) == 0:
        raise BadRecord("empty target", path, where, "target", "tokenizes to nothing")
    try:
        fit_budget(pair, budget)
    except TooLong as err:
        raise BadRecord("too long", path, where, "target", str(err)) from None
    return pair
