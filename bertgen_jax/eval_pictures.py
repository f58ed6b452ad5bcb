"""The pictures of an evaluation: for the first few test inputs of every captioning and MMT set
the image itself (ToyWorld corpora are rendered, `toyworld.render`; a run on real data has no
image files, so it shows none) with its source, output and references as text beside it, and
the results chart (`results_chart`) as `eval/results.png` and a TensorBoard image.

TensorBoard tags: `pictures/<set>/<image id>` (an image and a text summary), `eval/results`.
"""

from __future__ import annotations

import functools
import logging
import os

from bertgen_jax import metrics, results_chart
from bertgen_jax.reporting import tag_name

log = logging.getLogger(__name__)

PICTURES_PER_SET = 3  # test inputs shown as pictures, per captioning or MMT set
PICTURE_TASKS = ("ic", "mmt")


@functools.cache
def _say_no_pictures(root: str) -> None:
    log.info("pictures: %s is not a ToyWorld corpus and a run knows no image files for it; "
             "TensorBoard shows the results chart and text samples only", root)


def picture_source(data):
    """image id -> PIL picture for the run's corpus (`datasets.Datasets`), or None when it has no
    pictures (real data: logged once)."""
    if data.store is None:
        return None
    if data.manifest.get("name") != "ToyWorld":
        _say_no_pictures(data.root)
        return None
    from bertgen_jax.toyworld.render import Pictures  # noqa: PLC0415
    return Pictures(data.root)


def picture_text(source: str, hyp: str, refs: list[str]) -> str:
    """The markdown beside a picture: source (MMT), output, every reference."""
    lines = [f"**input** {source}"] if source else []
    lines.append(f"**output** {hyp}")
    lines += [f"**reference {k + 1}** {r}" for k, r in enumerate(refs)]
    return "  \n".join(lines)


def report(found, data, step: int, reporter, eval_dir: str) -> None:
    """Pictures of `found` (an `evaluate.Evaluation`) and its results chart. A picture that cannot
    be made (an image id the corpus lacks) is logged and skipped: it never stops a run."""
    if found.rows:
        os.makedirs(eval_dir, exist_ok=True)
        chart = results_chart.write(found.rows, os.path.join(eval_dir, "results.png"), step)
        reporter.images(step, "eval", {"results": chart})
    picture = picture_source(data)
    if picture is None:
        return
    for row, sample in zip(found.rows, found.samples):
        if row["variant"] != "model" or row["task"] not in PICTURE_TASKS:
            continue
        for pair, hyp, refs in list(zip(sample.inputs, sample.hyps, sample.refs))[:PICTURES_PER_SET]:
            image_id = data.store.ids[pair.image]
            try:
                image = picture(image_id)
            except (KeyError, OSError, ValueError) as err:
                log.warning("pictures: %s skipped: %s", image_id, err.args[0] if err.args else err)
                continue
            name = f"{row['set']}/{image_id}"
            reporter.images(step, "pictures", {name: image})
            source = metrics.ids_to_text(data.tokenizer, pair.src_ids) if len(pair.src_ids) else ""
            reporter.text(step, tag_name(f"pictures/{name}"), picture_text(source, hyp, refs))
