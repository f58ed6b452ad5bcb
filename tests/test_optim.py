"""The fused clip + AdamW equals optax's chain and torch's AdamW with clip_grad_norm_ (the
original's optimizer), step by step, with and without clipping and weight-decay masks."""

import jax
import ml_collections
import numpy as np
import optax
import pytest
import torch

from bertgen_jax import optim

SHAPES = {"dense": {"kernel": (6, 5), "bias": (5,)}, "norm": {"scale": (5,)}}


def settings(fused: bool, clip: float = 1.0, decay_all: bool = True):
    return ml_collections.ConfigDict(dict(b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.1, clip_norm=clip,
                                          decay_norms_and_biases=decay_all, fused=fused))


def tree(rng, scale):
    return jax.tree.map(lambda s: (rng.standard_normal(s) * scale).astype(np.float32), SHAPES,
                        is_leaf=lambda x: isinstance(x, tuple))


def gradients(seed=0, steps=6):
    """Small and large gradients alternately: clipping is off on some steps, on on others."""
    rng = np.random.default_rng(seed)
    return [tree(rng, 0.01 if i % 2 else 10.0) for i in range(steps)]


def run(optimizer, params, grads):
    state = optimizer.init(params)
    step = jax.jit(lambda g, s, p: optim.apply_gradients(optimizer, g, s, p))
    out = []
    for g in grads:
        params, state = step(g, state, params)
        out.append(params)
    return out


@pytest.mark.parametrize("clip,decay_all", [(1.0, True), (1.0, False), (0.0, True)])
def test_fused_equals_the_optax_chain(clip, decay_all):
    lr = optim.schedule(1e-2, 2, 6)
    params = tree(np.random.default_rng(1), 1.0)
    grads = gradients()
    fused = optim.make_optimizer(settings(True, clip, decay_all), lr)
    chain = optim.make_optimizer(settings(False, clip, decay_all), lr)
    assert isinstance(fused, optim.FusedAdamW) and not isinstance(chain, optim.FusedAdamW)
    for a, b in zip(run(fused, params, grads), run(chain, params, grads)):
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), a, b)
    # optax's interface too: update() gives the chain's updates.
    u_fused, _ = fused.update(grads[0], fused.init(params), params)
    u_chain, _ = chain.update(grads[0], chain.init(params), params)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-9), u_fused, u_chain)


def test_fused_equals_torch_adamw_with_clip_grad_norm():
    lr = optim.schedule(1e-2, 2, 6)
    params = tree(np.random.default_rng(1), 1.0)
    grads = gradients()
    ours = run(optim.make_optimizer(settings(True, clip=1.0), lr), params, grads)
    leaves, treedef = jax.tree.flatten(params)
    tensors = [torch.nn.Parameter(torch.tensor(x)) for x in leaves]
    opt = torch.optim.AdamW(tensors, lr=1.0, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.1)
    for i, g in enumerate(grads):
        for t, x in zip(tensors, jax.tree.leaves(g)):
            t.grad = torch.tensor(x)
        torch.nn.utils.clip_grad_norm_(tensors, 1.0)
        opt.param_groups[0]["lr"] = float(lr(i))
        opt.step()
        theirs = jax.tree.unflatten(treedef, [t.detach().numpy() for t in tensors])
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), ours[i], theirs)


def test_fused_state_shards_like_the_params():
    """tree_map_params (how step.py lays out optimizer state) finds both moment trees."""
    fused = optim.make_optimizer(settings(True), optim.schedule(1e-2, 2, 6))
    params = tree(np.random.default_rng(1), 1.0)
    marked = optax.tree_map_params(fused, lambda p: "param", fused.init(params),
                                   transform_non_params=lambda _: "other")
    assert marked.count == "other"
    assert set(jax.tree.leaves(marked.mu)) == set(jax.tree.leaves(marked.nu)) == {"param"}


def test_fused_keeps_parameter_dtypes_and_takes_a_constant_rate():
    fused = optim.fused_adamw(1e-2, 0.9, 0.999, 1e-6, 0.1, clip_norm=1.0)
    params = {"w": np.ones((3, 2), jax.numpy.bfloat16), "b": np.ones((2,), np.float32)}
    grads = jax.tree.map(lambda p: np.full(p.shape, 0.5, p.dtype), params)
    new, state = fused.apply(grads, fused.init(params), params)
    assert new["w"].dtype == jax.numpy.bfloat16 and new["b"].dtype == np.float32
    assert int(state.count) == 1 and float(new["b"][0]) < 1.0
