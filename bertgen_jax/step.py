"""Pure train and eval steps over plain dicts of arrays, jitted once with explicit shardings.

State travels as (params, opt_state): params the model's nnx.Param values as a nested dict
(float32), opt_state optax's. The model's structure (graphdef) and its non-parameter state
(dropout RNG streams) are closed over; dropout keys come from one root key folded by step and
micro-batch, so a run is reproducible bit for bit.

A batch has a leading micro-batch axis [A, B, ...]: the step scans over the A micro-batches
(A = 1: no scan), summing gradients of the summed loss, then divides by the global count of
real targets. The
update is therefore the same as one batch of A x B rows (gradient accumulation, exact up to
float summation order).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from bertgen_jax import compiles, optim
from bertgen_jax import sharding as shard_lib
from bertgen_jax import vocab
from bertgen_jax.checkpoint import merge_params
from bertgen_jax.layout import KIND_PAD
from bertgen_jax.objective import per_target_loss

_INSTANCES = itertools.count()  # each Steps counts its own compiles


class Steps:
    """The jitted train / eval steps of one model on one mesh, with a trace counter: a jitted
    function is traced once per compile, so `traces` counts compiles of each step (in
    compiles.COUNTS, keyed by this instance)."""

    @property
    def traces(self) -> dict:
        """Compiles of this instance's train and eval steps."""
        return {name: compiles.COUNTS[(name, self._key)] for name in ("train", "eval")}

    def __init__(self, model, optimizer: optax.GradientTransformation, lr: optax.Schedule,
                 mesh, num_streams: int, seed: int, rules=shard_lib.LOGICAL_AXIS_RULES):
        self.optimizer, self.lr, self.mesh, self.num_streams = optimizer, lr, mesh, num_streams
        self.root = jax.random.key(seed)
        self._key = next(_INSTANCES)
        model.train()
        self.train_graph, params, self.other = nnx.split(model, nnx.Param, ...)
        self.initial_params = nnx.to_pure_dict(params)  # the model's weights, until placed
        model.eval()
        self.eval_graph = nnx.graphdef(model)
        self.abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
        self.param_shardings = nnx.to_pure_dict(
            shard_lib.param_shardings(params, mesh, rules))
        self.opt_shardings = optax.tree_map_params(
            optimizer, lambda _, s: s, jax.eval_shape(optimizer.init, nnx.to_pure_dict(params)),
            self.param_shardings, transform_non_params=lambda _: self.replicated)
        # Micro-batch axis whole, rows split over data x fsdp.
        self.batch_sharding = shard_lib.batch_sharding(mesh, row_axis=1)
        self.train = jax.jit(
            self._train, donate_argnums=(0, 1),
            in_shardings=(self.param_shardings, self.opt_shardings, self.batch_sharding, self.replicated),
            out_shardings=(self.param_shardings, self.opt_shardings, self.replicated))
        self.evaluate = jax.jit(
            self._eval, in_shardings=(self.param_shardings, self.batch_sharding),
            out_shardings=self.replicated)

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    # -- state -------------------------------------------------------------------------------

    def place(self, params: dict | None = None):
        """(params, fresh opt_state) laid out on the mesh; params default to the model's own
        weights, which are then let go (the placed copy is the one that trains)."""
        if params is None:
            params, self.initial_params = self.initial_params, None
        params = jax.device_put(params, self.param_shardings)
        init = jax.jit(self.optimizer.init, out_shardings=self.opt_shardings)
        return params, init(params)

    def abstract_state(self):
        """Shapes, dtypes and shardings of (params, opt_state): the restore target."""
        def spec(x, s):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
        params = nnx.to_pure_dict(self.abstract)
        opt = jax.eval_shape(self.optimizer.init, params)
        return (jax.tree.map(spec, params, self.param_shardings),
                jax.tree.map(spec, opt, self.opt_shardings))

    def model(self, params: dict, train: bool = False):
        """An nnx model holding `params` (for decoding and export)."""
        return merge_params(self.train_graph if train else self.eval_graph, self.abstract, params, self.other)

    # -- steps -------------------------------------------------------------------------------

    def _rng_state(self, key):
        """The model's dropout RNG streams, each keyed by `key` folded with its index (built
        inside the trace: nnx refuses to mutate the closed-over concrete streams)."""
        leaves, tree = jax.tree.flatten(self.other)
        fresh = [jax.random.fold_in(key, i) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
                 else jnp.zeros_like(x) for i, x in enumerate(leaves)]
        return jax.tree.unflatten(tree, fresh)

    def _stats(self, micro, loss, correct):
        """Sums over one micro-batch: overall and per stream (one-hot over stream ids)."""
        w = micro["label_weights"]  # [B, P]
        onehot = jax.nn.one_hot(micro["stream_ids"], self.num_streams, dtype=jnp.float32) * w[..., None]
        return {
            "loss_sum": jnp.sum(loss * w), "correct": jnp.sum(correct * w), "targets": jnp.sum(w),
            "target_tokens": jnp.sum(w * (micro["labels"] != vocab.STOP_ID)),
            "real_tokens": jnp.sum(micro["token_kind"] != KIND_PAD).astype(jnp.float32),
            "positions": jnp.float32(micro["token_kind"].size),
            "stream_loss": jnp.einsum("bp,bps->s", loss, onehot),
            "stream_correct": jnp.einsum("bp,bps->s", correct, onehot),
            "stream_targets": jnp.sum(onehot, axis=(0, 1)),
        }

    def _train(self, params, opt_state, batch, step):
        compiles.record("train", self._key)
        key = jax.random.fold_in(self.root, step)

        def summed_loss(p, micro, k):
            model = merge_params(self.train_graph, self.abstract, p, self._rng_state(k))
            loss, correct = per_target_loss(model, micro)
            return jnp.sum(loss * micro["label_weights"]), (loss, correct)

        def micro_step(grads, xs):
            i, micro = xs
            (_, (loss, correct)), g = jax.value_and_grad(summed_loss, has_aux=True)(
                params, micro, jax.random.fold_in(key, i))
            return jax.tree.map(jnp.add, grads, g), self._stats(micro, loss, correct)

        micro_batches = batch["label_weights"].shape[0]
        if micro_batches == 1:  # no accumulation: skip a pass over a zero gradient tree
            micro = jax.tree.map(lambda x: x[0], batch)
            (_, (loss, correct)), grads = jax.value_and_grad(summed_loss, has_aux=True)(
                params, micro, jax.random.fold_in(key, 0))
            stats = self._stats(micro, loss, correct)
        else:
            zeros = jax.tree.map(jnp.zeros_like, params)
            grads, stats = jax.lax.scan(micro_step, zeros, (jnp.arange(micro_batches), batch))
            stats = jax.tree.map(lambda x: jnp.sum(x, axis=0), stats)
        grads = jax.tree.map(lambda g: g / jnp.maximum(stats["targets"], 1.0), grads)
        params, opt_state = optim.apply_gradients(self.optimizer, grads, opt_state, params)
        stats["grad_norm"] = optax.tree.norm(grads)
        stats["lr"] = jnp.asarray(self.lr(step), jnp.float32)
        stats["loss"] = stats["loss_sum"] / jnp.maximum(stats["targets"], 1.0)
        return params, opt_state, stats

    def _eval(self, params, batch):
        """Teacher-forced sums of one [A, B, ...] batch (no dropout)."""
        compiles.record("eval", self._key)
        model = merge_params(self.eval_graph, self.abstract, params, self.other)

        def one(_, micro):
            loss, correct = per_target_loss(model, micro)
            return None, self._stats(micro, loss, correct)

        _, stats = jax.lax.scan(one, None, batch)
        return jax.tree.map(lambda x: jnp.sum(x, axis=0), stats)
