"""`run(config, workdir)`: the training job, top to bottom.

  1. data        manifest -> feature store -> tokenized task streams -> batch iterator
  2. model       ModelConfig + initial weights (random / bert / visual / hybrid / bertgen)
  3. steps       mesh, optimizer, train and eval steps jitted once with explicit shardings
  4. resume      the latest checkpoint in the workdir that restores, if any (params, optimizer,
                 data position); only then config.json, model_config.json and vocab.txt
  5. loop        step; report and check for NaN at logging steps; checkpoint; evaluate;
                 on SIGTERM / SIGINT save the current step and return
  6. finish      last checkpoint, decode-and-score evaluation, results table
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal

import jax
import numpy as np

from bertgen_jax.errors import ConfigError, TrainingDiverged
from bertgen_jax import config_checks, optim, sharding, weights
from bertgen_jax.checkpoint import (MODEL_CONFIG, Checkpoints, check_workdir, checkpoint_dir, read_model_config,
                                    save_model_files)
from bertgen_jax.files import write_atomic
from bertgen_jax.data import datasets
from bertgen_jax.data.pipeline import BatchIterator, Stream, first_misfit
from bertgen_jax.data.rows import RowSpec
from bertgen_jax.model import ModelConfig
from bertgen_jax.reporting import Reporter, summarize
from bertgen_jax.step import Steps

log = logging.getLogger(__name__)


def run(config, workdir: str) -> dict:
    """Train as `config` says, in `workdir` (resuming what is there). Returns a summary:
    status ("finished" or "preempted"), step, compiles, last train and eval metrics, and the
    decode-and-score result rows."""
    config_checks.check(config)  # every value, before anything is written or loaded
    # A path, or a tuple of alternatives any one of which will do.
    alternatives = lambda path: (path,) if isinstance(path, str) else tuple(path)
    missing = [f"  {' or '.join(alternatives(path))}\n      get it: {where}"
               for path, where in config.required_files if not any(map(os.path.exists, alternatives(path)))]
    if missing:
        raise FileNotFoundError("missing files this config needs:\n" + "\n".join(missing))
    if "://" in workdir:
        raise ConfigError(f"workdir {workdir!r}: a URL; give a filesystem path (local, or a mount every "
                          "host shares, e.g. gcsfuse) and copy the run to a bucket afterwards (launch/tpu_vm.sh copy)")
    workdir = os.path.abspath(workdir)
    _check_objective(config, workdir)
    if config.data.manifest:  # a user's manifest and the stream names: checked before any file is written
        datasets.check_manifest(config.data, workdir)
    # Every other check against an existing workdir (model sizes, vocabulary, steps, checkpoint
    # state) comes before its files are written, at the end of section 4: a refused run leaves
    # the workdir, and `generate` on it, as they were.
    created = not os.path.isdir(workdir)
    os.makedirs(workdir, exist_ok=True)
    try:
        return _train(config, workdir)
    except BaseException:
        if created and not os.listdir(workdir):  # a refused fresh run leaves no empty folder behind
            os.rmdir(workdir)
        raise


def _train(config, workdir: str) -> dict:
    """run()'s sections 1-5 in a workdir that exists and passed run()'s checks."""
    first = jax.process_index() == 0

    # 1. data
    budgets = dict(config.data.budgets)
    # Only the first process may generate ToyWorld; the others read it after the barrier.
    data = datasets.load(config.data, workdir, budgets.__getitem__, is_first_process=True) if first else None
    if jax.process_count() > 1:  # the first process generated and prepared; the rest read
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("bertgen_jax data prepared")
        if not first:
            data = datasets.load(config.data, workdir, budgets.__getitem__, is_first_process=True)
    train_splits = data.splits["train"]
    if not train_splits:
        raise ConfigError(f"no train streams in {data.root}/manifest.json (data.train_streams="
                          f"{tuple(config.data.train_streams)})")
    stream_names = [s.name for s in train_splits]
    feature_dim = data.store.feature_dim if data.store is not None else (config.model.feature_dim or 2048)

    # 2. model
    model, model_cfg, report = _init_model(config, len(data.tokenizer), feature_dim)
    log.info("model: %s; %s", model_cfg, report.summary())
    check_workdir(workdir, model_cfg, data.vocab_file)  # the model and vocabulary its checkpoints hold

    # 3. mesh and steps
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    rules = tuple(config.mesh.rules) or sharding.LOGICAL_AXIS_RULES
    row_ways = mesh.shape["data"] * mesh.shape["fsdp"]
    one_pass = config.objective == "one_pass"
    shape = config.one_pass if one_pass else config.data  # the row shape of this objective
    global_rows = (config.one_pass.rows_per_device if one_pass else config.batch.rows_per_device) * row_ways
    if global_rows % jax.process_count():
        raise ConfigError(f"{global_rows} rows per micro-batch do not split over {jax.process_count()} processes")
    local_rows, accum = global_rows // jax.process_count(), config.batch.accum_steps
    total = config.train.steps
    peak = optim.peak_learning_rate(config.optim, global_rows * accum)
    lr = optim.schedule(peak, min(config.optim.warmup_steps, total), total)
    # Per-stream sums cover the longest split list: val holds every stream even when
    # data.train_streams trains on a few, and eval batches number streams by their val index.
    num_streams = max(len(splits) for splits in data.splits.values())
    steps = Steps(model, optim.make_optimizer(config.optim, lr), lr, mesh, num_streams,
                  config.seed, rules)
    log.info("mesh %s; %d rows x %d micro-batches per step; peak lr %.3g", dict(mesh.shape),
             global_rows, accum, peak)

    spec = RowSpec(shape.row_length, shape.targets_per_row, shape.regions_per_row, feature_dim, attention_rank=one_pass)
    weights_of = dict(config.data.stream_weights)

    def iterator(splits, train):
        streams = [Stream(s.name, s.pairs, weights_of.get(s.name, 1.0)) for s in splits]
        return BatchIterator(streams, data.store, spec, local_rows, config.data.mode, budgets,
                             seed=config.seed, process_index=jax.process_index(),
                             process_count=jax.process_count(), train=train, window=config.data.window,
                             objective=config.objective)

    # 4. resume
    misfit = first_misfit([s for split in ("train", "val") for s in data.splits.get(split, [])], spec, budgets,
                          config.objective)
    if misfit:
        keys = "one_pass" if one_pass else "data"
        raise ConfigError(f"{misfit}: raise {keys}.row_length / {keys}.targets_per_row / {keys}.regions_per_row "
                          "or lower data.budgets")
    train_it = iterator(train_splits, train=True)
    ckpt = Checkpoints(checkpoint_dir(workdir), config.train.checkpoint_every,
                       config.train.keep_checkpoints, config.train.async_checkpoints)
    start = ckpt.latest_step() or 0
    try:
        if start > total:
            raise ConfigError(f"{workdir} has a checkpoint at step {start}, past train.steps={total}: "
                              "give train.steps >= that to continue (or generate/evaluate from it)")
        if start:  # a newer checkpoint that does not restore is moved aside, an older one used
            start, params, opt_state = ckpt.restore_latest(*steps.abstract_state(), train_it)
        else:
            params, opt_state = steps.place()
    except BaseException:
        ckpt.close()
        raise
    if first:  # the checks passed: this run's config, and what generate.py needs to rebuild the model
        write_atomic(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=1) + "\n")
        save_model_files(workdir, model_cfg, data.vocab_file)
    del model  # its arrays now live in params
    batches = train_it.prefetch(config.data.prefetch) if config.data.prefetch else train_it
    reporter = Reporter(os.path.join(workdir, "tensorboard"), total, enabled=first)
    log.info("training steps %d..%d of %d streams: %s", start, total, len(stream_names), stream_names)

    # 5. loop
    stop = _StopRequest()
    step, pending, train_metrics, eval_metrics, status = start, [], {}, {}, "finished"
    eval_step = None  # the step eval_metrics were measured at
    if start == 0:  # the untrained baseline, for the curves
        eval_metrics, eval_step = _teacher_forced(steps, params, iterator, data, config, mesh, 0, reporter), 0
    try:
        while step < total:
            host = _stack([next(batches) for _ in range(accum)])
            params, opt_state, stats = steps.train(params, opt_state, sharding.global_batch(host, mesh, 1), step)
            step += 1
            pending.append(stats)
            if step % config.train.log_every == 0 or step == total:
                train_metrics = reporter.train(step, start, pending, stream_names, steps.traces["train"])
                pending = []
                _check_finite(train_metrics, step, ckpt)
            if stop.requested(step, ckpt):
                _check_finite(summarize([stats], stream_names), step, ckpt)
                reporter.flush()
                ckpt.save(step, params, opt_state, batches, force=True)
                status = "preempted"
                log.warning("stop requested (signal): saved step %d, exiting", step)
                break
            if step % config.train.checkpoint_every == 0 or step == total:
                _check_finite(summarize([stats], stream_names), step, ckpt)
                reporter.flush()
                ckpt.save(step, params, opt_state, batches, force=step == total)
            if config.train.eval_every and step % config.train.eval_every == 0 and step < total:
                eval_metrics = _teacher_forced(steps, params, iterator, data, config, mesh, step, reporter)
                eval_step = step
    finally:
        stop.restore()
        ckpt.close()

    # 6. finish
    summary = {"status": status, "step": step, "compiles": dict(steps.traces), "train": train_metrics,
               "eval": eval_metrics, "eval_step": eval_step, "results": [], "workdir": workdir}
    if status == "finished":
        summary["eval"] = _teacher_forced(steps, params, iterator, data, config, mesh, step, reporter)
        summary["eval_step"] = step
        if config.eval.decode:
            summary["results"] = _decode_eval(steps, params, data, config, step, reporter, workdir)
    reporter.hparams(_flat(config.to_dict()), {k: v for k, v in summary["eval"].items()
                                              if k in ("loss", "accuracy")})
    reporter.close()
    if first:
        write_atomic(os.path.join(workdir, "summary.json"), json.dumps(summary, indent=1, default=str))
    return summary


def results_table(summary: dict) -> str:
    """The console table of a run: per-stream teacher-forced metrics, then decode scores."""
    lines = [f"run {summary['status']} at step {summary['step']} ({summary['workdir']}); "
             f"train step compiled {summary['compiles'].get('train')}x"]
    if summary.get("eval"):
        metrics, label = summary["eval"], f"val at step {summary.get('eval_step')}, teacher-forced"
    else:
        metrics, label = summary.get("train") or {}, "train, last report"
    names = sorted(k.split("/", 1)[1] for k in metrics if k.startswith("loss/"))
    if names:
        lines += ["", f"| stream ({label}) | loss | [MASK] accuracy |", "|---|---|---|"]
        lines += [f"| {n} | {metrics[f'loss/{n}']:.4f} | {metrics[f'accuracy/{n}']:.3f} |" for n in names]
        lines.append(f"| all | {metrics['loss']:.4f} | {metrics['accuracy']:.3f} |")
    if summary.get("results"):
        from bertgen_jax import evaluate  # noqa: PLC0415
        lines += ["", evaluate.format_table(summary["results"])]
    return "\n".join(lines)


def _check_objective(config, workdir: str) -> None:
    """A workdir's checkpoints were trained with one objective and, from random weights, with
    the sizes config.model gives: continuing them with others is refused before anything is
    written or generated there (checkpoint.check_workdir compares the rest once the data and
    any pretrained weights have set the model's remaining sizes)."""
    if not os.path.isfile(os.path.join(workdir, MODEL_CONFIG)):
        return
    had = read_model_config(workdir)
    if had.objective != config.objective:
        raise ConfigError(f"{workdir} was trained with objective={had.objective!r}, this config has objective="
                          f"{config.objective!r}: use another --workdir (or --config.objective={had.objective})")
    if config.model.init == "random":
        sizes = ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_positions")
        changed = [f"{k} {getattr(had, k)!r} -> {config.model[k]!r}" for k in sizes if getattr(had, k) != config.model[k]]
        if changed:
            raise ConfigError(f"{workdir} holds a model of other settings than this config's ({'; '.join(changed)}; "
                              f"see its {MODEL_CONFIG}): use another --workdir, or that workdir's settings")


def _init_model(config, vocab_size: int, feature_dim: int):
    mc = config.model
    kw = {f.name: mc[f.name] for f in dataclasses.fields(ModelConfig) if f.name in mc}
    kw["objective"] = config.objective
    kw["vocab_size"] = mc.vocab_size or vocab_size
    kw["feature_dim"] = mc.feature_dim or feature_dim
    return weights.init_model(ModelConfig(**kw), mc.init, seed=config.seed,
                              bert_path=mc.bert_path or None, vlbert_path=mc.vlbert_path or None,
                              bertgen_path=mc.bertgen_path or None)


def _stack(batches: list[dict]) -> dict:
    """Micro-batches -> one host batch with a leading micro-batch axis [A, B, ...]."""
    return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


def _check_finite(metrics: dict, step: int, ckpt: Checkpoints) -> None:
    bad = {k: metrics.get(k) for k in ("loss", "grad_norm") if not np.isfinite(metrics.get(k, 0.0))}
    if bad:
        ckpt.wait()
        good = ckpt.latest_step()
        raise TrainingDiverged(
            f"{', '.join(f'{k}={v}' for k, v in bad.items())} by step {step}: training stopped. "
            f"The last good checkpoint is step {good} in {ckpt.directory}" if good else
            f"{bad} by step {step}: training stopped before any checkpoint was written. "
            "Lower optim.lr, raise optim.warmup_steps or check the data.")


def _teacher_forced(steps: Steps, params, iterator, data, config, mesh, step: int, reporter) -> dict:
    """Loss and [MASK] accuracy on the first `eval.batches` val batches (same every time)."""
    splits = [s for s in data.splits.get("val", []) if s.pairs]
    if not splits or config.eval.batches <= 0:
        return {}
    it = iterator(splits, train=False)
    stats = [steps.evaluate(params, sharding.global_batch(_stack([next(it)]), mesh, 1))
             for _ in range(config.eval.batches)]
    values = summarize(stats, [s.name for s in splits])
    reporter.scalars(step, values, "eval")
    log.info("eval at step %d: loss %.4f acc %.3f", step, values["loss"], values["accuracy"])
    return values


def _decode_eval(steps: Steps, params, data, config, step: int, reporter, workdir: str) -> list[dict]:
    """Decode the held-out split's sets, score them, write tables; rows of the results table."""
    from bertgen_jax import decode, evaluate  # noqa: PLC0415 (only a finished run decodes)
    model = steps.model(jax.device_get(params))
    max_len = dict(config.eval.max_len)

    def decoder(beam):
        def decode_fn(pairs):
            return decode.generate(model, pairs, data.store, beam=beam, max_len=max_len[pairs[0].task],
                                   batch_size=config.eval.decode_batch)
        return decode_fn

    other = config.eval.compare_beam  # a second decoder, its rows beside the main one's
    alternatives = {f"beam {other}" if other > 1 else "greedy": decoder(other)} if other else None

    sets = [dataclasses.replace(s, pairs=_first(s.pairs, config.eval.max_sentences))
            for s in data.splits.get(config.eval.decode_split, []) if s.pairs]
    found = evaluate.evaluate_sets(decoder(config.eval.beam), sets, data.tokenizer, out_dir=os.path.join(workdir, "eval"),
                                   step=step, shuffle_images=config.eval.shuffle_images, seed=config.seed,
                                   alternatives=alternatives)
    for row in found.rows:
        reporter.scalars(step, {k: row.get(k) for k in ("bleu", "meteor", "cider", "rouge_l")
                                if isinstance(row.get(k), (int, float))}, f"decode/{row['name']}")
    n = config.eval.samples
    for sample in found.samples:
        sources = [_input_text(p, data) for p in sample.inputs[:n]]
        reporter.samples(step, sample.name, sources, sample.hyps, sample.refs, n)
    if jax.process_index() == 0:  # pictures of test inputs, eval/results.png
        from bertgen_jax import eval_pictures  # noqa: PLC0415
        eval_pictures.report(found, data, step, reporter, os.path.join(workdir, "eval"))
    return found.rows


def _input_text(pair, data) -> str:
    """What a decoded input was, for text samples: its image id and/or its source sentence."""
    image = f"[image {data.store.ids[pair.image]}]" if pair.image >= 0 else ""
    from bertgen_jax import metrics  # noqa: PLC0415
    source = metrics.ids_to_text(data.tokenizer, pair.src_ids) if len(pair.src_ids) else ""
    return " ".join(x for x in (image, source) if x)


def _first(pairs, n: int):
    """The first n inputs of a held-out set (IC: all captions of its first n images); n=0: all."""
    if n <= 0:
        return pairs
    if pairs[0].task == "ic":
        images = set(list(dict.fromkeys(p.image for p in pairs))[:n])
        return [p for p in pairs if p.image in images]
    return pairs[:n]


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class _StopRequest:
    """SIGTERM (preemption) or SIGINT asks the loop to save and stop at the next step. With
    several processes all must stop at the same step: orbax's preemption sync point decides."""

    def __init__(self):
        self.signal = None
        self.previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals to the caller
                pass

    def _handle(self, signum, frame):
        self.signal = signum

    def requested(self, step: int, ckpt: Checkpoints) -> bool:
        if jax.process_count() > 1:
            return ckpt.manager.reached_preemption(step)
        return self.signal is not None

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
