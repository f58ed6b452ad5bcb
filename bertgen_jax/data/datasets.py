"""The datasets a run config names: a manifest of task streams (ToyWorld's, generated on
demand, or one written for real data), its prepared feature store, the tokenizer, tokenized
training streams and the held-out splits.

A manifest is JSON: {"vocab": file, "streams": [entry, ...]} with entries as
`streams.stream_pairs` reads them plus `split` (train / val / test) and `zero_shot`. Paths
are relative to the manifest's directory unless absolute.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os

from bertgen_jax.errors import ConfigError, DataError
from bertgen_jax import vocab
from bertgen_jax import toyworld
from bertgen_jax.data.feature_store import FeatureStore
from bertgen_jax.data.prepare import prepare_annotations
from bertgen_jax.data.records import SkipCounter
from bertgen_jax.data.streams import FORMATS, stream_pairs
from bertgen_jax.data.unroll import Pair
from bertgen_jax.layout import TASKS

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Split:
    """One stream of one split: a manifest entry and its tokenized pairs. `skipped` counts the
    records its reader dropped (bad, or over the budget), so scores can say what they cover."""
    name: str
    task: str
    src: str | None
    tgt: str
    zero_shot: bool
    pairs: list[Pair]
    skipped: int = 0


@dataclasses.dataclass
class Datasets:
    root: str
    manifest: dict
    tokenizer: object
    vocab_file: str
    store: FeatureStore | None
    splits: dict[str, list[Split]]  # split name -> its streams, in manifest order
    skips: SkipCounter


def manifest_path(data, workdir: str, is_first_process: bool = True) -> str:
    """The manifest the config names, or ToyWorld's, generated into the workdir if absent."""
    if data.manifest:
        path = os.path.abspath(os.path.expanduser(data.manifest))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"data.manifest={data.manifest!r}: no such file. Write a manifest "
                                    "(docs/data_formats.md) or leave it empty for ToyWorld")
        return path
    out = os.path.join(workdir, f"toyworld_{data.toyworld_scale}_{data.toyworld_seed}")
    path = os.path.join(out, "manifest.json")
    if not os.path.isfile(path) and is_first_process:
        log.info("generating ToyWorld %s (seed %d) into %s", data.toyworld_scale, data.toyworld_seed, out)
        toyworld.generate(out, seed=data.toyworld_seed, scale=data.toyworld_scale, progress=False)
    return path


def load(data, workdir: str, budget_for, splits=("train", "val", "test"),
         is_first_process: bool = True, progress: bool = False) -> Datasets:
    """Tokenized streams of the asked-for splits. `budget_for(task)` is the sequence budget
    pairs must fit (longer ones are skipped and counted). Only the first process generates
    ToyWorld and prepares features; call again on the others after a barrier."""
    path = manifest_path(data, workdir, is_first_process)
    root = os.path.dirname(path)
    manifest = read_manifest(path, need_vocab=not data.vocab)
    vocab_file = _resolve(root, data.vocab or manifest["vocab"])
    tokenizer = vocab.load_tokenizer(vocab_file)
    entries = [e for e in manifest["streams"] if e["split"] in splits]
    _check_names(data, manifest, path)
    wanted = set(data.train_streams)
    entries = [e for e in entries if not (e["split"] == "train" and wanted and e["name"] not in wanted)]
    jsonl = sorted({_resolve(root, e["file"]) for e in manifest["streams"] if e["format"] == "jsonl"})
    karpathy = [e["name"] for e in entries if e["format"] == "karpathy"]
    if karpathy and not data.features_dir:
        # Karpathy files name images only; their features cannot be built from the manifest.
        raise ConfigError(f"{path}: streams {karpathy} have format 'karpathy', whose features come from a "
                          "store you prepare (python -m bertgen_jax.data.prepare --tsv ... --out DIR); "
                          "set data.features_dir=DIR")
    store = None
    if data.features_dir:  # a store the user prepared (annotations or TSV): used as it is, never rebuilt
        store = FeatureStore(os.path.abspath(os.path.expanduser(data.features_dir)))
    elif jsonl:  # <manifest dir>/features, built from the annotations' zips when absent or stale
        store = prepare_annotations(jsonl, os.path.join(root, "features"), on_bad_record=data.on_bad_record,
                                    progress=progress and is_first_process)
    skips = SkipCounter()
    out: dict[str, list[Split]] = {s: [] for s in splits}
    for e in entries:
        own = SkipCounter()
        pairs = stream_pairs(e, root, tokenizer, store, budget_for(e["task"]),
                             on_bad_record=data.on_bad_record, skips=own)
        skips.merge(own)
        out[e["split"]].append(Split(e["name"], e["task"], e.get("src"), e["tgt"],
                                     bool(e.get("zero_shot")), pairs, own.total))
    if skips.total:
        log.warning("data: skipped records: %s", skips.summary())
    return Datasets(root, manifest, tokenizer, vocab_file, store, out, skips)


def check_manifest(data, workdir: str) -> None:
    """The manifest a config names and the stream names the config gives, checked without
    reading any data file: what a run asks before it writes anything."""
    path = manifest_path(data, workdir)
    _check_names(data, read_manifest(path, need_vocab=not data.vocab), path)


def _check_names(data, manifest: dict, path: str) -> None:
    train_names = sorted({e["name"] for e in manifest["streams"] if e["split"] == "train"})
    for key, names in (("data.train_streams", set(data.train_streams)),
                       ("data.stream_weights", set(dict(data.stream_weights)))):
        unknown = sorted(names - set(train_names))
        if unknown:
            raise ConfigError(f"{key} names {unknown}, not train streams of {path} (it has "
                              f"{train_names}){_suggest(unknown[0], train_names)}")


SPLITS = ("train", "val", "test")
# Fields each stream format reads, besides name, task, tgt, split and format.
FORMAT_FIELDS = {"jsonl": ("file", "tgt_field"), "karpathy": ("file",), "text": ("src_file", "tgt_file")}


def read_manifest(path: str, need_vocab: bool = True) -> dict:
    """The manifest at `path`, every stream entry checked (fields, task, split, format,
    languages) before anything is built from it: a mistake is one DataError naming the
    manifest, the stream and the field, not a failure after the feature store is prepared."""
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(path, None, None, f"is not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("streams"), list):
        raise DataError(path, None, "streams", "expected an object with a list of stream entries",
                        "see docs/data_formats.md, 'The manifest'")
    if need_vocab and not isinstance(manifest.get("vocab"), str):
        raise DataError(path, None, "vocab", "missing", "name the vocab.txt, or set data.vocab")
    for i, e in enumerate(manifest["streams"]):
        _check_stream(path, i, e)
    return manifest


def _check_stream(path: str, i: int, e) -> None:
    if not isinstance(e, dict):
        raise DataError(path, f"streams[{i}]", None, f"expected an object, got {type(e).__name__}")
    where = f"stream {e['name']!r}" if isinstance(e.get("name"), str) else f"streams[{i}]"
    for field in ("name", "task", "tgt", "split", "format"):
        if not isinstance(e.get(field), str):
            raise DataError(path, where, field, f"expected a string, got {e.get(field)!r}")
    for field, allowed in (("task", TASKS), ("split", SPLITS), ("format", FORMATS)):
        if e[field] not in allowed:
            raise DataError(path, where, field, f"unknown {field} {e[field]!r}",
                            f"use one of {allowed}{_suggest(e[field], allowed)}")
    langs = sorted(vocab.LANG_TAGS)
    if e["tgt"] not in langs:
        raise DataError(path, where, "tgt", f"unknown language {e['tgt']!r}",
                        f"use one of {langs}{_suggest(e['tgt'], langs)}")
    src = e.get("src")
    if e["task"] == "ic" and src is not None:
        raise DataError(path, where, "src", f"a captioning stream has no source language, got {src!r}",
                        "give src null")
    if e["task"] != "ic" and src not in langs:
        raise DataError(path, where, "src", f"unknown language {src!r}",
                        f"use one of {langs}{_suggest(src, langs)}")
    needed = FORMAT_FIELDS[e["format"]] + (("src_field",) if e["format"] == "jsonl" and src else ())
    for field in needed:
        if not isinstance(e.get(field), str):
            raise DataError(path, where, field, f"missing (format {e['format']!r} reads it)")


def _suggest(value, allowed) -> str:
    near = difflib.get_close_matches(str(value), list(allowed), n=1)
    return f"; did you mean {near[0]!r}?" if near else ""


def _resolve(root: str, name: str) -> str:
    return name if os.path.isabs(name) else os.path.join(root, name)
