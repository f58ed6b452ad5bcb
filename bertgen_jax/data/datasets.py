"""The datasets a run config names: a manifest of task streams (ToyWorld's, generated on
demand, or one written for real data), its prepared feature store, the tokenizer, tokenized
training streams and the held-out splits.

A manifest is JSON: {"vocab": file, "streams": [entry, ...]} with entries as
`streams.stream_pairs` reads them plus `split` (train / val / test) and `zero_shot`. Paths
are relative to the manifest's directory unless absolute.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

from bertgen_jax.errors import ConfigError
from bertgen_jax import vocab
from bertgen_jax import toyworld
from bertgen_jax.data.feature_store import FeatureStore
from bertgen_jax.data.prepare import prepare_annotations
from bertgen_jax.data.records import SkipCounter
from bertgen_jax.data.streams import stream_pairs
from bertgen_jax.data.unroll import Pair

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
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    vocab_file = _resolve(root, data.vocab or manifest["vocab"])
    tokenizer = vocab.load_tokenizer(vocab_file)
    entries = [e for e in manifest["streams"] if e["split"] in splits]
    wanted = set(data.train_streams)
    unknown = wanted - {e["name"] for e in entries if e["split"] == "train"}
    if unknown:
        raise ConfigError(f"data.train_streams names {sorted(unknown)}, not train streams of {path}; "
                          f"it has {sorted({e['name'] for e in manifest['streams'] if e['split'] == 'train'})}")
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


def _resolve(root: str, name: str) -> str:
    return name if os.path.isabs(name) else os.path.join(root, name)
