"""Device mesh, logical-axis rules for the model's parameters, and the one host -> global
batch conversion.

Mesh axes: `data` (pure data parallelism), `fsdp` (data parallelism with parameters sharded
along `embed`), `tensor` (Megatron-style: attention heads, MLP and vocabulary split).

The mesh's axes are `AxisType.Auto`: the model's operations carry no sharding annotations,
and with `Explicit` axes JAX's sharding-in-types refuses any operation whose output sharding
is ambiguous, starting with the word-embedding lookup from a ('tensor', 'fsdp')-sharded
table ("ShardingTypeError: use .at[...].get(out_sharding=)"). With Auto axes the jitted
steps' in/out shardings fix the layout and XLA propagates it through the model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import jax
import numpy as np
from flax import linen, nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from bertgen_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the leading (row) dimension of every batch array

# Logical parameter axis -> mesh axis (None: replicated). A tuple of pairs, so a config can
# hold and override it. The word table is [vocab, embed]; an axis that does not divide a
# dimension (mBERT's 119,547 rows over an even `tensor`) leaves that dimension replicated.
LOGICAL_AXIS_RULES = (
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("features", None),  # RoI projection input (geometry + appearance): small, kept whole
    ("embed_out", None),  # MLM head's transform: hidden x hidden, kept whole
)

log = logging.getLogger(__name__)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """A ('data', 'fsdp', 'tensor') mesh over `devices` (default: all); data=-1 takes the
    devices that fsdp and tensor leave."""
    devices = jax.devices() if devices is None else list(devices)
    if data == -1:
        if len(devices) % (fsdp * tensor):
            raise ConfigError(f"{len(devices)} devices do not split into fsdp={fsdp} x tensor={tensor}")
        data = len(devices) // (fsdp * tensor)
    if data * fsdp * tensor != len(devices):
        raise ConfigError(f"mesh data={data} x fsdp={fsdp} x tensor={tensor} needs "
                          f"{data * fsdp * tensor} devices, there are {len(devices)}")
    return jax.make_mesh((data, fsdp, tensor), MESH_AXES, axis_types=(AxisType.Auto,) * 3,
                         devices=devices)


def batch_sharding(mesh: Mesh, row_axis: int = 0) -> NamedSharding:
    """Rows (dimension `row_axis`) split over data x fsdp; every other dimension whole;
    replicated over tensor."""
    return NamedSharding(mesh, PartitionSpec(*(None,) * row_axis, BATCH_AXES))


def _fit(spec: PartitionSpec, shape, mesh: Mesh) -> PartitionSpec:
    """`spec` with each mesh axis that does not divide its dimension dropped."""
    out = []
    for size, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        ways = int(np.prod([mesh.shape[a] for a in names], dtype=int))
        out.append(axes if size % ways == 0 else None)
    return PartitionSpec(*out)


def param_shardings(state, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
    """NamedShardings for an nnx state (e.g. `nnx.state(model)`), same tree structure, from
    each variable's logical axis names (`nnx.with_partitioning` metadata) and `rules`.
    Variables without names (RNG counters) are replicated."""
    # A config may hold the rules as lists; a list of mesh axes means those axes together.
    rules = tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules)
    logical = nnx.get_partition_spec(state)  # Variables holding logical PartitionSpecs
    mesh_specs = linen.logical_to_mesh(logical, rules)
    replicated = []

    def place(spec, value):
        fitted = _fit(spec, np.shape(value), mesh)
        if fitted != spec:
            replicated.append((np.shape(value), spec))
        return NamedSharding(mesh, fitted)

    shardings = jax.tree.map(place, mesh_specs, state,
                             is_leaf=lambda x: isinstance(x, PartitionSpec))
    if replicated:
        log.info("parameters left whole along an axis its mesh axes do not divide: %s", replicated)
    return shardings


def global_batch(host_batch: Mapping[str, np.ndarray], mesh: Mesh, row_axis: int = 0) -> dict[str, jax.Array]:
    """THE conversion of this process's host batch into global arrays sharded by rows (dimension
    `row_axis`; the trainer's batches carry a micro-batch axis before it) over data x fsdp:
    every process passes its own rows, in process order."""
    sharding = batch_sharding(mesh, row_axis)
    ways = mesh.shape["data"] * mesh.shape["fsdp"]
    out = {}
    for key, value in host_batch.items():
        rows = np.shape(value)[row_axis] * jax.process_count()
        if rows % ways:
            raise ConfigError(f"batch key {key!r}: {rows} global rows do not split over data x fsdp "
                              f"= {ways} devices: make rows_per_batch x processes a multiple of {ways}")
        out[key] = jax.make_array_from_process_local_data(sharding, np.asarray(value))
    return out
