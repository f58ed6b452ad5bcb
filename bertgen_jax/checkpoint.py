"""Every file of a training workdir and of an exported model: written and read here, nowhere else.

A training workdir W:
  W/model_config.json    the run's ModelConfig (sizes), so the model can be rebuilt without its config
  W/vocab.txt            the run's WordPiece vocabulary
  W/checkpoints/<step>/  orbax items: params (the model's float32 nnx.Param values as a nested
                         dict), opt_state (optax's state) and data (the batch iterator's JSON
                         state, one file per process, grain's handler)
An exported directory D (`python -m bertgen_jax.generate --export D`):
  D/model_config.json, D/vocab.txt and D/params.safetensors (the params, names "a/b/0/c")
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
import shutil

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

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
    with open(os.path.join(resolve(out_dir), MODEL_CONFIG), "w", encoding="utf-8") as f:
        json.dump(dataclasses.asdict(cfg), f, indent=1)


def read_model_config(model_dir: str) -> ModelConfig:
    path = _model_file(model_dir, MODEL_CONFIG)
    with open(path, encoding="utf-8") as f:
        fields = json.load(f)
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    if set(fields) - known:
        raise ValueError(f"{path}: unknown ModelConfig fields {sorted(set(fields) - known)}; "
                         "was it written by a newer bertgen_jax? Use that version to load it")
    return ModelConfig(**fields)


def vocab_file(model_dir: str) -> str:
    """The vocabulary beside a model's weights (an error naming the directory when absent)."""
    return _model_file(model_dir, VOCAB)


def save_model_files(out_dir: str, cfg: ModelConfig, vocab: str) -> None:
    """The model's ModelConfig and vocabulary (copied from the file `vocab`), beside its weights."""
    write_model_config(out_dir, cfg)
    target = os.path.join(resolve(out_dir), VOCAB)
    if resolve(vocab) != target:
        shutil.copyfile(resolve(vocab), target)


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
        return checkpoints.restore_params(steps[-1] if step is None else step, abstract)
    finally:
        checkpoints.close()


# -- orbax checkpoints of a run -------------------------------------------------------------

class Checkpoints:
    """Save every `every` steps (and on demand), keep the newest `keep`, restore the latest.
    read_only: open an existing directory to restore from, never writing to it."""

    def __init__(self, directory: str, every: int = 1, keep: int | None = None, use_async: bool = True,
                 read_only: bool = False):
        self.directory = resolve(directory)
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=max(every, 1), max_to_keep=keep, create=not read_only,
            read_only=read_only, enable_async_checkpointing=use_async and not read_only)
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
        out = self._restore(step, items, "a run with another model size, other task streams, another "
                            "optim.fused or data.window, or an older bertgen_jax (optimizer and "
                            "data-iterator state layouts change between versions)? Use a fresh "
                            "--workdir or delete that checkpoint.")
        return out["params"], out["opt_state"]

    def restore_params(self, step: int, abstract_params):
        """The params of `step` alone (for decoding or export: no optimizer or data state)."""
        return self._restore(step, {"params": ocp.args.StandardRestore(abstract_params)},
                             "a run with another model_config.json (this workdir's was replaced?)")["params"]

    def _restore(self, step: int, items: dict, suspect: str):
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(**items))
        except (ValueError, KeyError, FileNotFoundError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise RuntimeError(f"cannot restore checkpoint step {step} from {self.directory}: {reason}. "
                               f"Was it written by {suspect}") from err
        log.info("checkpoint: restored step %d from %s", step, self.directory)
        return out

    def wait(self) -> None:
        """Block until every started save is on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
