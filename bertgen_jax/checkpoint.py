"""Orbax checkpoints of a run: parameters, optimizer state and the data iterator's position.

A checkpoint directory `<workdir>/checkpoints/<step>/` holds three items:
  params     the model's float32 parameters (nested dict, sharded arrays)
  opt_state  optax's state (Adam moments, step count)
  data       the batch iterator's JSON state, one file per process (grain's handler)
Beside them the workdir holds `model_config.json` and `vocab.txt`, so a checkpoint can be
turned back into a model without the run's config (generate.py).
Step s means "after s optimizer updates and the batches they consumed", so a run resumed from
s continues with exactly the batches and dropout keys it would have used.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil

import grain
import orbax.checkpoint as ocp

MODEL_CONFIG, VOCAB = "model_config.json", "vocab.txt"

log = logging.getLogger(__name__)


def save_model_files(out_dir: str, cfg, vocab_file: str) -> None:
    """The model's ModelConfig and vocabulary, beside its weights."""
    with open(os.path.join(out_dir, MODEL_CONFIG), "w", encoding="utf-8") as f:
        json.dump(dataclasses.asdict(cfg), f, indent=1)
    if os.path.abspath(vocab_file) != os.path.abspath(os.path.join(out_dir, VOCAB)):
        shutil.copyfile(vocab_file, os.path.join(out_dir, VOCAB))


class Checkpoints:
    """Save every `every` steps (and on demand), keep the newest `keep`, restore the latest."""

    def __init__(self, directory: str, every: int, keep: int, use_async: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=max(every, 1), max_to_keep=keep, create=True,
            enable_async_checkpointing=use_async)
        handlers = {"params": ocp.StandardCheckpointHandler(),
                    "opt_state": ocp.StandardCheckpointHandler(),
                    "data": grain.checkpoint.CheckpointHandler()}
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, params, opt_state, data_iterator, force: bool = False) -> bool:
        """Start saving (returns at once when async, after the arrays are copied off the
        devices); False when `step` is not a save step and not forced."""
        saved = self.manager.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
            data=grain.checkpoint.CheckpointSave(data_iterator)), force=force)
        if saved:
            log.info("checkpoint: saving step %d to %s", step, self.directory)
        return saved

    def restore(self, step: int, abstract_params, abstract_opt_state, data_iterator=None):
        """(params, opt_state) of `step` laid out as the abstract targets say (shape, dtype and
        sharding), and the data iterator moved to where it was (when one is given)."""
        items = {"params": ocp.args.StandardRestore(abstract_params),
                 "opt_state": ocp.args.StandardRestore(abstract_opt_state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(**items))
        except (ValueError, KeyError, FileNotFoundError) as err:
            raise RuntimeError(
                f"cannot restore checkpoint step {step} from {self.directory}: {err}. Was it written "
                "by a run with another model size, other task streams, another optim.fused or "
                "data.window, or an older bertgen_jax (optimizer and data-iterator state layouts "
                "change between versions)? Use a fresh --workdir or delete that checkpoint.") from err
        log.info("checkpoint: restored step %d from %s", step, self.directory)
        return out["params"], out["opt_state"]

    def wait(self) -> None:
        """Block until every started save is on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
