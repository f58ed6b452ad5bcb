"""`check(config)`: every config value that cannot work, found before a run writes, generates or
loads anything. Each problem is one ConfigError line of the form `key=value: expected ...`, with
a did-you-mean for misspelt choices and task names.

Why up front: a zero interval only fails at the first logging step (modulo by zero), a negative
step count is blamed on warm-up, a zero batch surfaces inside the batch iterator: each after
minutes of data preparation and compilation, and none naming the key to change.
"""

from __future__ import annotations

import difflib
import numbers

from bertgen_jax.data.one_pass import OBJECTIVES
from bertgen_jax.data.records import ON_BAD_RECORD
from bertgen_jax.data.rows import MODES
from bertgen_jax.errors import ConfigError
from bertgen_jax.layout import TASKS
from bertgen_jax.optim import LR_RULES
from bertgen_jax.toyworld import SCALES
from bertgen_jax.weights import INIT_MODES

# Settings with a fixed set of values.
CHOICES = {
    "objective": OBJECTIVES,
    "data.mode": MODES,
    "data.on_bad_record": ON_BAD_RECORD,
    "data.toyworld_scale": tuple(SCALES),
    "model.init": INIT_MODES,
    "model.dtype": ("float32", "bfloat16"),
    "optim.lr_rule": LR_RULES,
    "eval.decode_split": ("train", "val", "test"),
}

# Integers and the least each can be; the text says what the key counts, for the message.
AT_LEAST = {
    "seed": (0, "the root seed"),
    "data.toyworld_seed": (0, "ToyWorld's corpus seed"),
    "data.row_length": (1, "tokens per row"),
    "data.targets_per_row": (1, "target slots per row"),
    "data.regions_per_row": (0, "image-region slots per row"),
    "data.window": (1, "pairs open at once"),
    "data.prefetch": (0, "host batches built ahead; 0: none"),
    "one_pass.row_length": (1, "tokens per one-pass row"),
    "one_pass.targets_per_row": (1, "query slots per one-pass row"),
    "one_pass.regions_per_row": (0, "image-region slots per one-pass row"),
    "one_pass.rows_per_device": (1, "one-pass rows per device per micro-batch"),
    "batch.rows_per_device": (1, "rows per device per micro-batch"),
    "batch.accum_steps": (1, "micro-batches per optimizer step"),
    "model.vocab_size": (0, "0: the tokenizer's size"),
    "model.hidden_size": (1, "model width"),
    "model.num_layers": (1, "encoder layers"),
    "model.num_heads": (1, "attention heads"),
    "model.intermediate_size": (1, "feed-forward width"),
    "model.max_positions": (1, "position table rows"),
    "model.feature_dim": (0, "0: the feature store's"),
    "optim.warmup_steps": (0, "linear warm-up steps"),
    "mesh.fsdp": (1, "fsdp ways"),
    "mesh.tensor": (1, "tensor-parallel ways"),
    "train.steps": (1, "optimizer steps in all"),
    "train.log_every": (1, "steps between reports"),
    "train.checkpoint_every": (1, "steps between checkpoints"),
    "train.keep_checkpoints": (1, "newest checkpoints kept"),
    "train.eval_every": (0, "steps between val evaluations; 0: only at the end"),
    "eval.batches": (0, "teacher-forced val batches"),
    "eval.decode_batch": (1, "sentences decoded together"),
    "eval.max_sentences": (0, "inputs decoded per set; 0: all"),
    "eval.beam": (1, "1: greedy, more: beam width"),
    "eval.compare_beam": (0, "0: off, else a second decoder's width"),
    "eval.samples": (0, "decoded examples per set written to TensorBoard"),
}

# Per-task integer tables: every task needs an entry of at least 1.
PER_TASK = {"data.budgets": "sequence budget", "eval.max_len": "decode length limit"}

# Real numbers: key -> (low, low included, high or None, what).
REAL = {
    "optim.weight_decay": (0.0, True, None, "AdamW weight decay"),
    "optim.eps": (0.0, False, None, "Adam epsilon"),
    "optim.clip_norm": (0.0, True, None, "gradient-norm clip; 0: none"),
    "optim.b1": (0.0, True, 1.0, "Adam beta1"),
    "optim.b2": (0.0, True, 1.0, "Adam beta2"),
    "model.dropout": (0.0, True, 1.0, "dropout rate"),
    "model.attention_dropout": (0.0, True, 1.0, "attention dropout rate"),
}


def check(config) -> None:
    """Raise ConfigError on the first value of `config` that cannot work."""
    for key, allowed in CHOICES.items():
        value = _get(config, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r}: expected one of {allowed}{_suggest(value, allowed)}")
    for key, (least, what) in AT_LEAST.items():
        _integer(key, _get(config, key), least, what)
    mesh_data = _get(config, "mesh.data")
    if not _is_int(mesh_data) or (mesh_data < 1 and mesh_data != -1):
        raise ConfigError(f"mesh.data={mesh_data!r}: expected -1 (the devices fsdp x tensor leave) "
                          "or an integer >= 1")
    for key, what in PER_TASK.items():
        _per_task(key, _get(config, key), what)
    _reals(config)
    _stream_weights(_get(config, "data.stream_weights"))
    _relations(config)


def _reals(config) -> None:
    # Only the rate the chosen rule reads must be positive.
    rate = "optim.lr" if _get(config, "optim.lr_rule") == "absolute" else "optim.base_lr"
    for key, (low, closed, high, what) in {rate: (0.0, False, None, "peak learning rate"), **REAL}.items():
        value = _get(config, key)
        ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
              and (value >= low if closed else value > low) and (high is None or value < high))
        if not ok:
            bound = f"{'>=' if closed else '>'} {low:g}" + (f" and < {high:g}" if high is not None else "")
            raise ConfigError(f"{key}={value!r}: expected a number {bound} ({what})")


def _relations(config) -> None:
    """Values fine alone that do not work together."""
    width, heads = _get(config, "model.hidden_size"), _get(config, "model.num_heads")
    if width % heads:
        raise ConfigError(f"model.hidden_size={width}: not a multiple of model.num_heads={heads}; "
                          "change one so each head gets a whole share of the width")
    # A text-only example's [END] sits at position = its length (no region token holds T), so an
    # MT budget as large as the position table would put it one past the end (a NaN embedding).
    mt, positions = dict(_get(config, "data.budgets"))["mt"], _get(config, "model.max_positions")
    if mt >= positions:
        raise ConfigError(f"data.budgets.mt={mt}: an MT example of that length puts [END] at position {mt}, "
                          f"past model.max_positions={positions}; give at most {positions - 1}")
    beam, other = _get(config, "eval.beam"), _get(config, "eval.compare_beam")
    if other and other == beam:
        raise ConfigError(f"eval.compare_beam={other}: expected 0 (off) or a width other than "
                          f"eval.beam={beam} (1: greedy)")


def _integer(key: str, value, least: int, what: str) -> None:
    if not _is_int(value) or value < least:
        raise ConfigError(f"{key}={value!r}: expected an integer >= {least} ({what})")


def _per_task(key: str, table, what: str) -> None:
    table = dict(table)
    for task in table:
        if task not in TASKS:
            raise ConfigError(f"{key} has task {task!r}: expected tasks {TASKS}{_suggest(task, TASKS)}")
    for task in TASKS:
        if task not in table:
            raise ConfigError(f"{key} has no entry for task {task!r}: give every task in {TASKS} a {what}")
        _integer(f"{key}.{task}", table[task], 1, what)  # as --config.KEY.TASK=N sets it


def _stream_weights(weights) -> None:
    # Stream names are checked against the manifest when it is read (datasets.load).
    for name, weight in dict(weights).items():
        if not isinstance(weight, numbers.Real) or isinstance(weight, bool) or not weight >= 0:
            raise ConfigError(f"data.stream_weights[{name!r}]={weight!r}: expected a number >= 0 "
                              "(a sampling weight)")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _get(config, key: str):
    node = config
    for part in key.split("."):
        try:
            node = node[part]
        except (KeyError, AttributeError):
            raise ConfigError(f"{key}: missing from the config; start configs from configs/base.py's "
                              "get_config(), which sets every key") from None
    return node


def _suggest(value, allowed) -> str:
    near = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""
