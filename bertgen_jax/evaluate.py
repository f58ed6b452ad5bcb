"""Decode held-out sets, detokenise, score, and write what was scored.

For every held-out set (a `datasets.Split`) one row ("model"); for visual sets (ic, mmt) also
the adversarial image shuffle of the paper (every input gets another test image, a fixed-seed
derangement) as "<name> (shuffled images)"; for mt and mmt a copy-the-source baseline,
"<name> (copy source)", against which zero-shot rows can be read; for every set one row per
alternative decoder given (e.g. "<name> (beam 4)" beside greedy's). Variant rows carry
`delta_bleu` = their BLEU minus the model row's (a shuffle costing BLEU shows as a negative
number).

Captioning sets hold one pair per caption, several per image: one hypothesis is decoded per
image (from the image's first pair) and scored against all of that image's captions.
References are the detokenised target ids, i.e. the text as the tokenizer saw it, so reference
and hypothesis are cut the same way (the original scored against the raw caption strings).

Files under out_dir (only the process that calls this writes; in a multi-host run call it on
process 0):
  hyps/<step>/<name>.txt            one hypothesis per line (".shuffled" / ".copy" / ".beam_4" variants)
  hyps/<step>/<name>.ref<k>.txt     k-th reference of each line, empty where a line has fewer
  results.json                      {"evals": [{"step": ..., "rows": [...]}, ...]}, every eval
  results.md                        the same as markdown tables, newest eval first
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Callable, Sequence

import numpy as np

from bertgen_jax import metrics
from bertgen_jax.data.datasets import Split
from bertgen_jax.data.unroll import Pair

log = logging.getLogger(__name__)

VISUAL_TASKS = ("ic", "mmt")
COPY_TASKS = ("mt", "mmt")
SHUFFLED, COPY = "shuffled images", "copy source"


@dataclasses.dataclass(frozen=True)
class Sample:
    """What one results row decoded, in order: the caller's material for text samples."""
    name: str  # the row's name
    inputs: list[Pair]  # as decoded (images already moved for a shuffled-image row)
    hyps: list[str]
    refs: list[list[str]]


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """What `evaluate_sets` found: the results rows (as results.json holds them) and samples."""
    rows: list[dict]
    samples: list[Sample]  # one per row, in the same order


def decode_inputs(s: Split) -> tuple[list[Pair], list[list[np.ndarray]]]:
    """(pairs to decode, reference ids of each): one per image for captioning, else every pair."""
    if s.task != "ic":
        return list(s.pairs), [[p.tgt_ids] for p in s.pairs]
    first: dict[int, Pair] = {}
    refs: dict[int, list[np.ndarray]] = {}
    for p in s.pairs:
        first.setdefault(p.image, p)
        refs.setdefault(p.image, []).append(p.tgt_ids)
    return list(first.values()), list(refs.values())


def derange_images(pairs: Sequence[Pair], seed: int = 0) -> list[Pair] | None:
    """Pairs with their images moved by a derangement of the distinct images (Sattolo's
    algorithm: one random cycle, so no image stays in place); regions travel with the image.
    None when there are fewer than two distinct images."""
    images = list(dict.fromkeys(p.image for p in pairs))
    if len(images) < 2:
        return None
    regions = {p.image: p.num_regions for p in pairs}
    rng = np.random.default_rng(seed)
    perm = list(range(len(images)))
    for i in range(len(images) - 1, 0, -1):
        j = int(rng.integers(0, i))
        perm[i], perm[j] = perm[j], perm[i]
    moved = {images[k]: images[perm[k]] for k in range(len(images))}
    return [dataclasses.replace(p, image=moved[p.image], num_regions=regions[moved[p.image]])
            for p in pairs]


def evaluate_sets(decode_fn: Callable[[list[Pair]], list[np.ndarray]], eval_sets: Sequence[Split],
                  tokenizer, *, out_dir: str | None = None, step: int | None = None,
                  shuffle_images: bool = True, seed: int = 0, tokenize: str = "words",
                  alternatives: dict[str, Callable[[list[Pair]], list[np.ndarray]]] | None = None) -> Evaluation:
    """Decode, detokenise and score every set (module docstring); write files when out_dir is
    given; return the rows and, for each, what was decoded (`Sample`) for the caller to show.
    `decode_fn(pairs)` returns one id array per pair, in order; `alternatives` maps a variant
    name (e.g. "beam 4") to another such function."""
    clash = set(alternatives or ()) & {"model", SHUFFLED, COPY}
    if clash:
        raise ValueError(f"alternative decoder names {sorted(clash)} are taken by evaluate's own rows")
    rows, samples, files = [], [], {}
    for s in eval_sets:
        if not s.pairs:
            log.warning("eval set %s is empty: skipped", s.name)
            continue
        if s.skipped:
            log.warning("eval set %s: %d records skipped when it was read; scores cover the rest",
                        s.name, s.skipped)
        inputs, ref_ids = decode_inputs(s)
        refs = [[metrics.ids_to_text(tokenizer, r) for r in rs] for rs in ref_ids]
        hyps = _decode(decode_fn, inputs, tokenizer, s.name)
        base = _row(s, "model", hyps, refs, step, tokenize)
        rows.append(base)
        samples.append(Sample(base["name"], inputs, hyps, refs))
        files[s.name] = (hyps, refs)
        variants = []
        if shuffle_images and s.task in VISUAL_TASKS:
            moved = derange_images(inputs, seed)
            if moved is None:
                log.warning("eval set %s: one image only, no shuffled-image run", s.name)
            else:
                variants.append((SHUFFLED, _decode(decode_fn, moved, tokenizer, s.name)))
        if s.task in COPY_TASKS:
            variants.append((COPY, [metrics.ids_to_text(tokenizer, p.src_ids) for p in inputs]))
        for variant, alt_fn in (alternatives or {}).items():
            variants.append((variant, _decode(alt_fn, inputs, tokenizer, s.name)))
        for variant, vhyps in variants:
            row = _row(s, variant, vhyps, refs, step, tokenize)
            row["delta_bleu"] = row["bleu"] - base["bleu"]
            rows.append(row)
            files[row["name"]] = (vhyps, None)
            samples.append(Sample(row["name"], moved if variant == SHUFFLED else inputs, vhyps, refs))
    if out_dir is not None:
        write_results(out_dir, step, rows, files)
    return Evaluation(rows, samples)


def _decode(decode_fn, pairs, tokenizer, name) -> list[str]:
    out = list(decode_fn(pairs))
    if len(out) != len(pairs):
        raise ValueError(f"eval set {name}: decode_fn returned {len(out)} outputs for {len(pairs)} inputs")
    return [metrics.ids_to_text(tokenizer, ids) for ids in out]


def _row(s: Split, variant: str, hyps, refs, step, tokenize) -> dict:
    name = s.name if variant == "model" else f"{s.name} ({variant})"
    row = {"name": name, "set": s.name, "variant": variant, "task": s.task, "src": s.src,
           "tgt": s.tgt, "direction": f"{s.src or 'image'}->{s.tgt}", "zero_shot": s.zero_shot,
           "step": step, "skipped": s.skipped}
    row.update(metrics.score(hyps, refs, s.tgt, tokenize=tokenize))
    row["delta_bleu"] = None
    row["hyp_file"] = _file_name(s.name, variant) + ".txt"
    log.info("%s: BLEU %.2f METEOR %s CIDEr %.3f (n=%d)", name, row["bleu"],
             "-" if row["meteor"] is None else f"{row['meteor']:.2f}", row["cider"], row["n"])
    return row


def _file_name(set_name: str, variant: str) -> str:
    suffix = {"model": "", SHUFFLED: ".shuffled", COPY: ".copy"}.get(variant, "." + variant)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", set_name + suffix)


def _step_dir(step) -> str:
    return "final" if step is None else str(step)


def write_results(out_dir: str, step, rows: list[dict], files: dict) -> None:
    """Hypothesis/reference files of this eval, and results.json / results.md over all evals."""
    hyp_dir = os.path.join(out_dir, "hyps", _step_dir(step))
    os.makedirs(hyp_dir, exist_ok=True)
    for row in rows:
        hyps, refs = files[row["name"]]
        _write_lines(os.path.join(hyp_dir, row["hyp_file"]), hyps)
        for k in range(max(map(len, refs)) if refs else 0):
            _write_lines(os.path.join(hyp_dir, f"{_file_name(row['set'], 'model')}.ref{k}.txt"),
                         [rs[k] if k < len(rs) else "" for rs in refs])
    path = os.path.join(out_dir, "results.json")
    evals = []
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            evals = [e for e in json.load(f)["evals"] if e["step"] != step]
    evals.append({"step": step, "rows": rows})
    evals.sort(key=lambda e: (e["step"] is None, e["step"] or 0))
    _atomic_write(path, json.dumps({"evals": evals}, indent=1, ensure_ascii=False) + "\n")
    md = ["# Decoding results", ""]
    for e in reversed(evals):
        md += [f"## step {_step_dir(e['step'])}", "", format_table(e["rows"], markdown=True), ""]
    _atomic_write(os.path.join(out_dir, "results.md"), "\n".join(md))


def _write_lines(path: str, lines: Sequence[str]) -> None:
    # One line per segment: a stray newline inside a hypothesis would shift every later line.
    _atomic_write(path, "".join(" ".join(line.split()) + "\n" for line in lines))


def _atomic_write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


_COLUMNS = [("name", "name"), ("task", "task"), ("direction", "direction"), ("zero-shot", "zero_shot"),
            ("n", "n"), ("BLEU", "bleu"), ("METEOR", "meteor"), ("CIDEr", "cider"),
            ("ROUGE-L", "rouge_l"), ("BLEU-4 coco", "bleu_4"), ("dBLEU vs model", "delta_bleu")]


def _cell(key: str, value) -> str:
    if value is None:
        return "-"
    if key == "zero_shot":
        return "yes" if value else ""
    if key == "cider":
        return f"{value:.3f}"
    if isinstance(value, float):
        return f"{value:+.2f}" if key == "delta_bleu" else f"{value:.2f}"
    return str(value)


def format_table(rows: Sequence[dict], markdown: bool = False) -> str:
    """The rows as an aligned console table, or a markdown table with the METEOR settings used
    listed under it (they differ per language; see metrics.meteor_command)."""
    cells = [[_cell(k, r.get(k)) for _, k in _COLUMNS] for r in rows]
    heads = [h for h, _ in _COLUMNS]
    if markdown:
        lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        notes = dict.fromkeys(f"{r['tgt']}: {r['meteor_note']}" for r in rows if r.get("meteor_note"))
        if notes:
            lines += ["", "METEOR: " + "; ".join(notes)]
        return "\n".join(lines)
    widths = [max(len(x) for x in col) for col in zip(heads, *cells)]
    fmt = lambda c: "  ".join(x.ljust(w) if i < 4 else x.rjust(w)  # noqa: E731
                              for i, (x, w) in enumerate(zip(c, widths)))
    return "\n".join([fmt(heads), fmt(["-" * w for w in widths])] + [fmt(c) for c in cells])
