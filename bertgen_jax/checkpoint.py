"""Every file of a training workdir and of an exported model: written and read here, nowhere else.

A training workdir W:
  W/model_config.json    the run's ModelConfig (sizes), so the model can be rebuilt without its config
  W/vocab.txt            the run's WordPiece vocabulary
  W/checkpoints/<step>/  orbax items: params (the model's float32 nnx.Param values as a nested
                         dict), opt_state (optax's state) and data (the batch iterator's JSON
                         state, one file per process, grain's handler)
An exported directory D (`python -m bertgen_jax.generate --export D`):
  D/model_config.json, D/vocab.txt and D/params.safetensors (the params, names "a/b/0/c")
Small files are written whole or not at all (files.write_atomic). What is done about stray step
directories, corrupt checkpoints and failed saves: checkpoint_faults.py.
Step s means "after s optimizer updates and the batches they consumed", so a run resumed from
s continues with exactly the batches and dropout keys it would have used.
Paths may be relative or start with `~`: every public function resolves them, since orbax
accepts absolute paths only.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from bertgen_jax import checkpoint_faults as faults
from bertgen_jax.errors import CheckpointError, ConfigError
from bertgen_jax.files import write_atomic
from bertgen_jax.model import BertGen, ModelConfig

MODEL_CONFIG, VOCAB, PARAMS, CHECKPOINTS = "model_config.json", "vocab.txt", "params.safetensors", "checkpoints"

log = logging.getLogger(__name__)


def resolve(path: str) -> str:
    """`path` made absolute, with `~` expanded (users type `runs/x` and `~/runs/x`)."""
    return os.path.abspath(os.path.expanduser(path))


def checkpoint_dir(workdir: str) -> str:
    """Where a training workdir keeps its orbax checkpoints."""
    return os.path.join(resolve(workdir), CHECKPOINTS)


# -- model config and vocabulary ------------------------------------------------------------

def _model_file(model_dir: str, name: str) -> str:
    path = os.path.join(resolve(model_dir), name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{model_dir}: no {name}; expected a training workdir or a directory "
                                "written by `python -m bertgen_jax.generate --export`")
    return path


def write_model_config(out_dir: str, cfg: ModelConfig) -> None:
    write_atomic(os.path.join(resolve(out_dir), MODEL_CONFIG), json.dumps(dataclasses.asdict(cfg), indent=1))


def read_model_config(model_dir: str) -> ModelConfig:
    path = _model_file(model_dir, MODEL_CONFIG)
    try:
        with open(path, encoding="utf-8") as f:
            fields = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not a readable model config ({err}); restore it from a copy "
                              "or export the model again") from err
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    if not isinstance(fields, dict) or set(fields) - known:
        extra = sorted(set(fields) - known) if isinstance(fields, dict) else type(fields).__name__
        raise CheckpointError(f"{path}: unknown ModelConfig fields {extra}; was it written by a newer "
                              "bertgen_jax? Use that version to load it")
    return ModelConfig(**fields)


def vocab_file(model_dir: str) -> str:
    """The vocabulary beside a model's weights (an error naming the directory when absent)."""
    return _model_file(model_dir, VOCAB)


def save_model_files(out_dir: str, cfg: ModelConfig, vocab: str) -> None:
    """The model's ModelConfig and vocabulary (copied from the file `vocab`), beside its weights."""
    write_model_config(out_dir, cfg)
    target = os.path.join(resolve(out_dir), VOCAB)
    if resolve(vocab) != target:
        with open(resolve(vocab), "rb") as f:
            write_atomic(target, f.read())


# Model settings a run may change when it continues a workdir: how the model computes or was
# initialised, not the shape or meaning of any parameter its checkpoints hold.
RESUMABLE_FIELDS = ("dropout", "attention_dropout", "dtype", "remat", "visual_ln_init")


def check_workdir(workdir: str, cfg: ModelConfig, vocab: str) -> None:
    """A run continuing `workdir` must build the model its checkpoints hold: the same sizes as
    its model_config.json and the same vocabulary as its vocab.txt. Called before the run writes
    anything there, so a refused run leaves the workdir (and `generate` on it) as it was."""
    path = os.path.join(resolve(workdir), MODEL_CONFIG)
    if os.path.isfile(path):
        had = read_model_config(workdir)
        changed = [f"{f.name} {getattr(had, f.name)!r} -> {getattr(cfg, f.name)!r}"
                   for f in dataclasses.fields(ModelConfig)
                   if f.name not in RESUMABLE_FIELDS and getattr(had, f.name) != getattr(cfg, f.name)]
        if changed:
            raise ConfigError(f"{workdir} holds a model of other settings than this config's ({'; '.join(changed)}; "
                              f"see its {MODEL_CONFIG}): use another --workdir, or that workdir's settings")
    kept = os.path.join(resolve(workdir), VOCAB)
    if os.path.isfile(kept) and resolve(vocab) != kept:
        with open(kept, "rb") as a, open(resolve(vocab), "rb") as b:
            if a.read() != b.read():
                raise ConfigError(f"{workdir} was trained with the vocabulary in its {VOCAB}, this config's "
                                  f"data uses another ({vocab}): use another --workdir, or that vocabulary")


def check_keep(keep: int | None) -> None:
    """orbax's max_to_keep=0 deletes every checkpoint in the directory, those of earlier runs too."""
    if keep is not None and keep < 1:
        raise ConfigError(f"train.keep_checkpoints={keep}: expected 1 or more (how many of the newest "
                          "checkpoints are kept); 0 would delete every checkpoint, those already there too")


# -- parameters as safetensors (exported models) -----------------------------------------------

def _flatten(tree: dict, leaf=np.asarray, prefix: str = "") -> dict:
    """{"a/b/0/c": leaf(value)} of a nested dict."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        out.update(_flatten(value, leaf, name + "/") if isinstance(value, dict) else {name: leaf(value)})
    return out


def write_params(out_dir: str, params: dict) -> None:
    """A nested dict of arrays (nnx.to_pure_dict of the params) as `params.safetensors`."""
    from safetensors.numpy import save_file
    save_file(_flatten(jax.device_get(params)), os.path.join(resolve(out_dir), PARAMS))


def read_params(model_dir: str) -> dict:
    """The nested dict `write_params` wrote; integer path parts (layer indices) become ints
    again, as nnx.to_pure_dict has them."""
    from safetensors.numpy import load_file
    tree: dict = {}
    for name, value in load_file(_model_file(model_dir, PARAMS)).items():
        node = tree
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(int(p) if p.isdigit() else p, {})
        node[int(leaf) if leaf.isdigit() else leaf] = value
    return tree


def _check_params(params: dict, abstract: dict, source: str) -> None:
    """Same names and shapes as the model, or one line naming the first difference."""
    have = _flatten(params, np.shape)
    want = _flatten(abstract, lambda x: tuple(x.shape))
    for name in sorted(set(have) | set(want)):
        if have.get(name) != want.get(name):
            got = "absent" if name not in have else f"shape {have[name]}"
            need = "no such parameter" if name not in want else f"shape {want[name]}"
            raise ValueError(f"{source}: parameter {name} is {got} there but the model's "
                             f"model_config.json gives {need}; the files do not belong together")


# -- parameters into a model ----------------------------------------------------------------

def merge_params(graphdef, abstract, params: dict, *rest):
    """The nnx model of `graphdef` with parameter values from the nested dict `params`.

    abstract: the model's nnx.Param state (only its structure is used: leaves may be shapes);
    rest: the model's other states, as nnx.split returned them. Works inside a jit trace.
    """
    state = jax.tree.map(lambda x: x, abstract)  # a copy: replace_by_pure_dict writes in place
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state, *rest)


def load_model(model_dir: str, step: int | None = None) -> BertGen:
    """The model of an exported directory, or of a training workdir's checkpoint `step`
    (default: the latest)."""
    model_dir = resolve(model_dir)
    cfg = read_model_config(model_dir)
    graphdef, abstract, rest = nnx.split(nnx.eval_shape(lambda: BertGen(cfg, nnx.Rngs(0))), nnx.Param, ...)
    target = nnx.to_pure_dict(abstract)
    if os.path.isfile(os.path.join(model_dir, PARAMS)):
        if step is not None:
            raise ValueError(f"{model_dir} is an exported model (one set of params): a step applies "
                             "to a training workdir only; drop --step")
        params = read_params(model_dir)
        _check_params(params, target, os.path.join(model_dir, PARAMS))
    else:
        params = restore_params(model_dir, target, step)
    # The other state is the dropout RNG streams, which an abstract model holds only as shapes;
    # an eval-mode model never draws from them, so any concrete value does.
    rest = jax.tree.map(lambda x: jax.random.key(0) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
                        else np.zeros(x.shape, x.dtype), rest)
    return merge_params(graphdef, abstract, params, rest)


def export_model(model: BertGen, vocab: str, out_dir: str) -> None:
    """model_config.json + vocab.txt + params.safetensors: everything `load_model` needs."""
    os.makedirs(resolve(out_dir), exist_ok=True)
    write_params(out_dir, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    save_model_files(out_dir, model.cfg, vocab)


def restore_params(workdir: str, abstract: dict, step: int | None = None) -> dict:
    """The params of a training workdir's checkpoint `step` (default: the latest), laid out as
    the nested dict of shapes `abstract` says."""
    directory = checkpoint_dir(workdir)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{workdir}: neither {PARAMS} (an exported model) nor {CHECKPOINTS}/ "
                                "(a training workdir); point at a workdir that has saved a checkpoint")
    checkpoints = Checkpoints(directory, read_only=True)
    try:
        steps = sorted(checkpoints.all_steps())
        if not steps or (step is not None and step not in steps):
            wanted = "no checkpoints" if step is None else f"no checkpoint {step}"
            raise FileNotFoundError(f"{directory}: {wanted} (have {steps})")
        try:
            return checkpoints.restore_params(steps[-1] if step is None else step, abstract)
        except CheckpointError as err:
            if step is None and len(steps) > 1:  # the user picks an older one; nothing is chosen for them
                raise CheckpointError(f"{err} Older checkpoints there: {steps[:-1]} (pick one with --step N)") from err
            raise
    finally:
        checkpoints.close()


# -- orbax checkpoints of a run -------------------------------------------------------------

class Checkpoints:
    """Save every `every` steps (and on demand), keep the newest `keep`, restore the latest.
    read_only: open an existing directory to restore from, never writing to it.

    Only finished step directories count (a stray `999/` is skipped with a warning); a save that
    fails, in the background or not, is a CheckpointError at the next save, wait or close.
    """

    def __init__(self, directory: str, every: int = 1, keep: int | None = None, use_async: bool = True,
                 read_only: bool = False):
        check_keep(keep)
        self.directory = resolve(directory)
        self._names = faults.FinishedSteps()
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=max(every, 1), max_to_keep=keep, create=not read_only,
            read_only=read_only, enable_async_checkpointing=use_async and not read_only,
            step_name_format=self._names)
        handlers = {"params": ocp.StandardCheckpointHandler(),
                    "opt_state": ocp.StandardCheckpointHandler(),
                    "data": grain.checkpoint.CheckpointHandler()}
        faults.quiet_orbax_errors()
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
        self._pending: int | None = None  # a started save not yet known to be on disk
        self._failed = False

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, params, opt_state, data_iterator, force: bool = False) -> bool:
        """Start saving (returns at once when async, after the arrays are copied off the
        devices); False when `step` is not a save step and not forced. A full disk is refused
        before writing; an earlier save that failed in the background is raised here."""
        if not force and not self.manager.should_save(step):
            return False
        self.wait()
        need = sum(getattr(x, "nbytes", 0) for x in jax.tree.leaves((params, opt_state)))
        free = faults.free_bytes(self.directory)
        # One process alone: with several, each would decide on its own view of the disk, and
        # one refusing while the others save would hang them at orbax's barrier.
        if jax.process_count() == 1 and free is not None and free < need:
            self._fail(step, f"not started: it needs about {faults.size(need)}")
        try:
            saved = self.manager.save(step, args=ocp.args.Composite(
                params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
                data=grain.checkpoint.CheckpointSave(data_iterator)), force=force)
        except Exception as err:  # noqa: BLE001 (orbax and TensorStore raise bare Exception too)
            self._fail(step, faults.describe(err), err)
        if saved:
            self._pending = step
            log.info("checkpoint: saving step %d to %s", step, self.directory)
        return saved

    def _fail(self, step: int | None, problem: str, err: BaseException | None = None):
        """Raise the one line of a failed save, after removing what it left half-written."""
        self._failed, self._pending = True, None
        faults.quiet_abandoned_work()
        if jax.process_index() == 0 and step is not None:
            faults.remove_partial_save(self.directory, step)
        good = max((s for s in self._steps_on_disk() if s != step), default=None)
        raise CheckpointError(faults.save_failed(self.directory, step, problem, good)) from err

    def _steps_on_disk(self) -> list[int]:
        return [m.step for m in self._names.find_all(self.directory)]

    def restore(self, step: int, abstract_params, abstract_opt_state, data_iterator=None):
        """(params, opt_state) of `step` laid out as the abstract targets say (shape, dtype and
        sharding), and the data iterator moved to where it was (when one is given)."""
        items = {"params": ocp.args.StandardRestore(abstract_params),
                 "opt_state": ocp.args.StandardRestore(abstract_opt_state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        out = self._restore(step, items, "a run with other task streams, another optim.fused or "
                            "data.window, or an older bertgen_jax (optimizer and data-iterator state "
                            "layouts change between versions)? Use a fresh --workdir, or this workdir's settings")
        return out["params"], out["opt_state"]

    def restore_latest(self, abstract_params, abstract_opt_state, data_iterator=None):
        """(step, params, opt_state) of the newest checkpoint that restores. Newer ones that do
        not (a truncated file) are then moved aside with a warning each, never deleted. When none
        restores (most often: another config) nothing is moved and the newest one's error is raised."""
        steps, failed = sorted(self.all_steps(), reverse=True), []
        if not steps:
            raise FileNotFoundError(f"{self.directory}: no checkpoints to restore")
        for step in steps:
            try:
                params, opt_state = self.restore(step, abstract_params, abstract_opt_state, data_iterator)
            except CheckpointError as err:
                failed.append((step, err))
                continue
            if failed:
                self._move_aside(failed, step)
            return step, params, opt_state
        if len(failed) > 1:
            raise CheckpointError(f"{failed[0][1]} (nor does any older one: steps {steps[1:]})") from failed[0][1]
        raise failed[0][1]

    def _move_aside(self, failed: list, good: int) -> None:
        for step, err in failed:
            if jax.process_index() == 0:
                try:
                    where = faults.move_aside(self.directory, step)
                except OSError as move_err:
                    raise CheckpointError(f"checkpoint step {step} in {self.directory} does not restore and "
                                          f"cannot be moved aside ({move_err}): move it yourself") from err
                log.warning("checkpoint: step %d in %s does not restore (%s): moved to %s; resuming from step %d",
                            step, self.directory, faults.describe(err.__cause__ or err), where, good)
        if jax.process_count() > 1:  # every process lists the directory after the moves
            from jax.experimental import multihost_utils  # noqa: PLC0415
            multihost_utils.sync_global_devices("bertgen_jax checkpoints moved aside")
        self.manager.reload()

    def restore_params(self, step: int, abstract_params):
        """The params of `step` alone (for decoding or export: no optimizer or data state)."""
        return self._restore(step, {"params": ocp.args.StandardRestore(abstract_params)},
                             "a run with another model_config.json (this workdir's was replaced?)")["params"]

    def _restore(self, step: int, items: dict, suspect: str):
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as err:  # noqa: BLE001 (TensorStore's read errors are bare Exceptions)
            faults.quiet_abandoned_work()
            raise CheckpointError(f"cannot restore checkpoint step {step} from {self.directory}: "
                                  f"{faults.describe(err)}. A damaged file, or written by {suspect}") from err
        log.info("checkpoint: restored step %d from %s", step, self.directory)
        return out

    def wait(self) -> None:
        """Block until every started save is on disk; a CheckpointError when one failed."""
        step, self._pending = self._pending, None
        try:
            self.manager.wait_until_finished()
        except Exception as err:  # noqa: BLE001
            self._fail(step, faults.describe(err), err)
        # orbax may log a failure and go on (its finalize step catches some errors): a save
        # counts only once its directory is there, finished.
        if step is not None and jax.process_index() == 0 and not faults.finished(
                os.path.join(self.directory, self._names.build_name(step))):
            self._fail(step, "its directory is missing or unfinished after the save (see the DEBUG log)")

    def close(self) -> None:
        try:
            if not self._failed:
                self.wait()
        finally:
            try:
                self.manager.close()
            except Exception:  # noqa: BLE001 (after a failed save: already reported)
                if not self._failed:
                    raise
                log.debug("checkpoint: closing after a failed save", exc_info=True)
