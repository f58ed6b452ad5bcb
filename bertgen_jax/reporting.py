"""Training metrics: aggregated with clu.metrics, written to TensorBoard event files with
tensorboardX (no TensorFlow), and a console progress line with an ETA.

Steps return sums (loss, correct predictions, targets, per stream); these stay on the device
until a logging step, where they are fetched once and merged.
"""

from __future__ import annotations

import logging
import re
import time

import jax
import numpy as np
from clu import metrics
from tensorboardX import SummaryWriter

log = logging.getLogger(__name__)


def _average(total, count) -> metrics.Average:
    return metrics.Average(total=np.float64(total), count=np.float64(count))


def summarize(stats: list[dict], stream_names: list[str]) -> dict[str, float]:
    """Merged metrics of several steps' (or eval batches') sums: loss and [MASK] accuracy
    overall and per stream, token counts, and the mean of per-step scalars (lr, grad norm)."""
    stats = jax.device_get(stats)
    out = {}
    merged = {"loss": None, "accuracy": None}
    for s in stats:
        parts = {"loss": _average(s["loss_sum"], s["targets"]),
                 "accuracy": _average(s["correct"], s["targets"])}
        merged = {k: parts[k] if merged[k] is None else merged[k].merge(parts[k]) for k in parts}
    out.update({k: float(v.compute()) for k, v in merged.items() if v.count > 0})
    for i, name in enumerate(stream_names):
        count = sum(float(s["stream_targets"][i]) for s in stats)
        if count:
            out[f"loss/{name}"] = sum(float(s["stream_loss"][i]) for s in stats) / count
            out[f"accuracy/{name}"] = sum(float(s["stream_correct"][i]) for s in stats) / count
    for key in ("targets", "target_tokens", "real_tokens", "positions"):
        out[key] = float(sum(float(s[key]) for s in stats))
    out["real_token_fraction"] = out["real_tokens"] / max(out["positions"], 1.0)
    for key in ("lr", "grad_norm"):
        if key in stats[0]:
            out[key] = float(np.mean([s[key] for s in stats]))
    return out


def duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def tag_name(name: str) -> str:
    """A TensorBoard tag from a display name: "decode/mmt_en-de (shuffled images)/bleu" ->
    "decode/mmt_en-de_shuffled_images/bleu" (tensorboardX would otherwise rename it, noisily)."""
    name = re.sub(r"\s*\(([^)]*)\)", r"_\1", name)
    return re.sub(r"[^A-Za-z0-9_./-]+", "_", name)


def sample_markdown(sources: list[str], hyps: list[str], refs: list[list[str]], n: int) -> str:
    """Input, hypothesis and first reference of the first n lines, as a markdown list."""
    out = []
    for src, hyp, rs in list(zip(sources, hyps, refs))[:n]:
        out.append(f"- **input** {src}  \n  **output** {hyp}  \n  **reference** {rs[0] if rs else ''}")
    return "\n".join(out)


class Reporter:
    """TensorBoard writer (first process only) and console progress."""

    def __init__(self, logdir: str, total_steps: int, enabled: bool = True):
        self.writer = SummaryWriter(logdir, flush_secs=30) if enabled else None
        self.total_steps = total_steps
        self.started = time.perf_counter()
        self.mark = (None, self.started)  # (step, time) of the last training report

    def scalars(self, step: int, values: dict[str, float], prefix: str) -> None:
        if self.writer:
            for key, value in values.items():
                if value is not None and np.isfinite(value):
                    self.writer.add_scalar(tag_name(f"{prefix}/{key}"), value, step)

    def text(self, step: int, tag: str, text: str) -> None:
        if self.writer:
            self.writer.add_text(tag, text, step)

    def images(self, step: int, tag: str, images: dict) -> None:
        """Image summaries: `images` maps a name to a PIL image or an [H, W, 3] uint8 array, each
        written under `<tag>/<name>`."""
        if self.writer:
            for name, image in images.items():
                pixels = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, np.uint8)
                self.writer.add_image(tag_name(f"{tag}/{name}"), pixels, step, dataformats="HWC")

    def samples(self, step: int, name: str, sources: list[str], hyps: list[str],
                refs: list[list[str]], n: int) -> None:
        """The first n decoded inputs of an eval set as a markdown text summary."""
        if self.writer and n > 0:
            self.text(step, f"samples/{tag_name(name)}", sample_markdown(sources, hyps, refs, n))

    def train(self, step: int, first_step: int, stats: list[dict], stream_names: list[str],
              compiles: int) -> dict[str, float]:
        """Log `stats` (the steps since the last report, ending at `step`) and return them merged."""
        now = time.perf_counter()
        last_step, last_time = self.mark
        values = summarize(stats, stream_names)
        if last_step is not None:  # the first report's interval includes the compile
            seconds = max(now - last_time, 1e-9)
            values["examples_per_sec"] = values["targets"] / seconds
            values["target_tokens_per_sec"] = values["target_tokens"] / seconds
            values["real_tokens_per_sec"] = values["real_tokens"] / seconds
            values["steps_per_sec"] = (step - last_step) / seconds
        values["compiles"] = compiles
        self.mark = (step, now)
        self.scalars(step, values, "train")
        rate = values.get("steps_per_sec")
        eta = duration((self.total_steps - step) / rate) if rate else "?"
        log.info("step %d/%d (%d%%) loss %.4f acc %.3f lr %.2e gnorm %.2f | %s ex/s | elapsed %s ETA %s",
                 step, self.total_steps, 100 * step // max(self.total_steps, 1), values["loss"],
                 values["accuracy"], values.get("lr", float("nan")), values.get("grad_norm", float("nan")),
                 f"{values['examples_per_sec']:.0f}" if rate else "-",
                 duration(now - self.started), eta)
        return values

    def flush(self) -> None:
        """Events on disk up to now (called with each checkpoint, so a killed run keeps its curves)."""
        if self.writer:
            self.writer.flush()

    def hparams(self, hparams: dict, final: dict[str, float]) -> None:
        if self.writer:
            flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
            self.writer.add_hparams(flat, {f"final/{k}": v for k, v in final.items()}, name="hparams")

    def close(self) -> None:
        if self.writer:
            self.writer.close()
