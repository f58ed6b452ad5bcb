"""Sharding: mesh, parameter placement from logical axis names, and host -> global batches.

The 8-device checks need XLA_FLAGS set before jax is imported, which other test modules have
already done in this process, so this file runs itself in a subprocess for them.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FEAT = 8


def tiny_model():
    """A tiny BertGen with random values everywhere (LayerNorm gammas included, so vision is
    on), filled from numpy: initialising it with jax compiles for seconds on the CPU."""
    import jax
    from flax import nnx

    from bertgen_jax import layout, model as M
    # vocab 401 is odd: no even `tensor` axis divides it, as with mBERT's 119,547 rows.
    cfg = M.ModelConfig(vocab_size=401, hidden_size=32, num_layers=2, num_heads=4,
                        intermediate_size=48, max_positions=96, feature_dim=FEAT, box_frequencies=4)
    graph, state = nnx.split(nnx.eval_shape(lambda: M.BertGen(cfg, nnx.Rngs(0))))
    rng = np.random.default_rng(0)

    def fill(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.key(0)
        if not np.issubdtype(x.dtype, np.floating):
            return np.zeros(x.shape, x.dtype)
        return rng.normal(0, 0.5, x.shape).astype(x.dtype)
    model = nnx.merge(graph, jax.tree.map(fill, state))
    model.eval()
    return model


def pipeline_batch(rows):
    """A real host batch from the pipeline: IC, MMT and MT pairs packed into `rows` rows."""
    from bertgen_jax.data.pipeline import BatchIterator, Stream
    from bertgen_jax.data.rows import RowSpec
    from bertgen_jax.data.unroll import Pair
    rng = np.random.default_rng(0)
    store = {i: (np.tile(np.array([[0, 0, 99, 79]], np.float32), (4, 1)),
                 rng.normal(size=(4, FEAT)).astype(np.float32), np.array([100, 80], np.float32))
             for i in range(4)}
    streams = [Stream(task, [Pair(task, "en", rng.integers(200, 400, 0 if task == "ic" else 3),
                                  rng.integers(200, 400, 4), -1 if task == "mt" else j % 4,
                                  0 if task == "mt" else 4) for j in range(8)])
               for task in ("ic", "mmt", "mt")]
    it = BatchIterator(streams, store, RowSpec(64, 8, 12, FEAT), rows, seed=0)
    return next(it)


def spec_str(spec):
    """'data+fsdp, None' for P(('data', 'fsdp'), None): the same text whatever jax's repr."""
    return ", ".join("+".join(a) if isinstance(a, tuple) else str(a) for a in spec)


def eight_device_checks():
    """Run with 8 fake CPU devices; prints one JSON line of what the test asserts."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax.sharding import AxisType

    from bertgen_jax import layout, model as M
    from bertgen_jax import sharding as S

    out = {"devices": jax.device_count()}
    host = pipeline_batch(rows=8)
    mesh = S.make_mesh(data=4, tensor=2)
    out["mesh"] = dict(mesh.shape)
    out["auto"] = all(t == AxisType.Auto for t in mesh.axis_types)
    batch = S.global_batch(host, mesh)
    out["specs"] = sorted({spec_str(a.sharding.spec) for a in batch.values()})
    out["equal"] = all(np.array_equal(jax.device_get(batch[k]), host[k]) for k in host)
    shards_ok = True
    for key, array in batch.items():
        for shard in array.addressable_shards:
            rows = shard.index[0]
            data_coord = int(np.argwhere(mesh.devices == shard.device)[0][0])
            shards_ok &= shard.data.shape == (2,) + host[key].shape[1:]
            shards_ok &= (rows.start, rows.stop) == (2 * data_coord, 2 * data_coord + 2)
            shards_ok &= np.array_equal(np.asarray(shard.data), host[key][rows])
        shards_ok &= len(array.addressable_shards) == 8
    out["shards_ok"] = bool(shards_ok)
    try:
        S.global_batch({"labels": host["labels"][:6]}, mesh)
    except ValueError as err:
        out["indivisible_error"] = str(err)

    # Parameters placed by logical axis names on a 2 x 2 x 2 mesh; a sharded step gives the
    # numbers of the single-device one.
    mesh = S.make_mesh(data=2, fsdp=2, tensor=2)
    graph, state = nnx.split(tiny_model())
    shardings = S.param_shardings(state, mesh)
    specs = {
        "query": shardings["layers"][0]["attention"]["query"]["kernel"],
        "attn_out": shardings["layers"][0]["attention"]["output"]["kernel"],
        "mlp_in": shardings["layers"][1]["intermediate"]["kernel"],
        "word": shardings["embeddings"]["word_embeddings"]["embedding"],
        "mlm_bias": shardings["mlm_head"]["bias"],
        "ln": shardings["embeddings"]["layer_norm"]["scale"],
    }
    out["param_specs"] = {k: spec_str(v.get_value().spec) for k, v in specs.items()}
    sharded_state = jax.device_put(state, shardings)
    out["query_shard"] = list(sharded_state["layers"][0]["attention"]["query"]["kernel"]
                              .get_value().addressable_shards[0].data.shape)

    def logits(state, batch):
        return nnx.merge(graph, state)(batch, batch["mask_positions"])

    keys = [k for k in layout.BATCH_KEYS if k in host] + ["mask_positions"]
    host = {k: host[k] for k in keys}
    step = jax.jit(logits, in_shardings=(shardings, S.batch_sharding(mesh)))
    sharded = step(sharded_state, S.global_batch(host, mesh))
    single = jax.jit(logits)(state, {k: jnp.asarray(v) for k, v in host.items()})
    out["logits_max_diff"] = float(jnp.max(jnp.abs(sharded - single)))
    out["logits_spec"] = spec_str(sharded.sharding.spec)
    print(json.dumps(out))


def test_eight_device_mesh_batches_and_parameters():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, __file__], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == 8 and out["mesh"] == {"data": 4, "fsdp": 1, "tensor": 2}
    assert out["auto"]
    assert out["specs"] == ["data+fsdp"]
    assert out["equal"] and out["shards_ok"]
    assert "6 global rows do not split over data x fsdp = 4" in out["indivisible_error"]
    assert out["param_specs"] == {
        "query": "fsdp, tensor", "attn_out": "tensor, fsdp", "mlp_in": "fsdp, tensor",
        "word": "None, fsdp",  # 401 rows: left whole over tensor
        "mlm_bias": "None", "ln": "fsdp"}
    assert out["query_shard"] == [16, 16]
    assert out["logits_max_diff"] < 1e-5
    assert out["logits_spec"].startswith("data+fsdp")


def test_rules_name_every_parameter_axis_of_the_model():
    import jax
    from flax import nnx
    from jax.sharding import PartitionSpec

    from bertgen_jax.sharding import LOGICAL_AXIS_RULES
    specs = nnx.get_partition_spec(nnx.state(tiny_model()))
    leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
    names = {axis for spec in leaves for axis in spec if axis is not None}
    assert names == {"vocab", "embed", "heads", "mlp", "features", "embed_out"}
    assert names == {name for name, _ in LOGICAL_AXIS_RULES}


def test_one_device_mesh_and_errors():
    import jax
    from flax import nnx

    from bertgen_jax import sharding as S
    mesh = S.make_mesh()
    assert dict(mesh.shape) == {"data": jax.device_count(), "fsdp": 1, "tensor": 1}
    host = pipeline_batch(rows=2)
    batch = S.global_batch(host, mesh)
    for key, value in host.items():
        np.testing.assert_array_equal(jax.device_get(batch[key]), value)
        assert batch[key].dtype == value.dtype
    with pytest.raises(ValueError, match="needs 6 devices"):
        S.make_mesh(data=3, tensor=2, devices=jax.devices()[:1])

    # Rules as a config holds them (lists) place parameters as the tuple form does.
    state = nnx.state(tiny_model())
    as_lists = [[name, axes] for name, axes in S.LOGICAL_AXIS_RULES]
    assert jax.tree.leaves(S.param_shardings(state, mesh, as_lists)) == \
        jax.tree.leaves(S.param_shardings(state, mesh))


if __name__ == "__main__":
    eight_device_checks()
