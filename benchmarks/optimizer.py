"""One optimizer update (global-norm clip + AdamW) over the base model's parameter shapes:
optax's chain, our fused update, and torch's clip_grad_norm_ + AdamW(fused=True).

    python -m benchmarks.optimizer [--repeats 5]

Each is timed on its own (min and median of the repeats, after one warm-up), jitted with the
parameters and state donated on the JAX side, as the train step runs it.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bertgen_jax import optim

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def base_shapes(layers=12, hidden=768, mlp=3072, vocab=119547, features=4096, positions=512):
    shapes = {"word": (vocab, hidden), "positions": (positions, hidden), "roi": (features, hidden)}
    for i in range(layers):
        shapes.update({f"{i}/qkv": (hidden, 3 * hidden), f"{i}/out": (hidden, hidden),
                       f"{i}/mlp_in": (hidden, mlp), f"{i}/mlp_out": (mlp, hidden)})
        shapes.update({f"{i}/vector{k}": (hidden,) for k in range(8)})  # biases, LayerNorms
    return shapes


def timed(fn, repeats: int) -> tuple[float, float]:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), float(np.median(times))


def jax_update(fused: bool, shapes, repeats: int):
    settings = ml_collections.ConfigDict(dict(fused=fused, b1=0.9, b2=0.999, eps=1e-6, weight_decay=1e-4,
                                              clip_norm=10.0, decay_norms_and_biases=True))
    optimizer = optim.make_optimizer(settings, optim.schedule(1e-4, 10, 1000))
    params = {k: jnp.full(s, 0.01, jnp.float32) for k, s in shapes.items()}
    grads = {k: jnp.full(s, 0.02, jnp.float32) for k, s in shapes.items()}  # norm > 10: clipped
    step = jax.jit(lambda p, s, g: optim.apply_gradients(optimizer, g, s, p), donate_argnums=(0, 1))
    box = [params, optimizer.init(params)]

    def once():
        box[0], box[1] = step(box[0], box[1], grads)
        jax.block_until_ready(box[0])
    return timed(once, repeats)


def torch_update(shapes, repeats: int):
    import torch  # noqa: PLC0415
    tensors = [torch.nn.Parameter(torch.full(s, 0.01)) for s in shapes.values()]
    for t in tensors:
        t.grad = torch.full_like(t, 0.02)
    opt = torch.optim.AdamW(tensors, lr=1e-4, eps=1e-6, weight_decay=1e-4, fused=True)

    def once():
        torch.nn.utils.clip_grad_norm_(tensors, 10.0)
        opt.step()
    return timed(once, repeats)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    shapes = base_shapes()
    print(f"{sum(int(np.prod(s)) for s in shapes.values()) / 1e6:.1f}M float32 parameters; "
          f"seconds per update, min / median of {args.repeats}")
    rows = [("optax chain(clip_by_global_norm, adamw)", jax_update(False, shapes, args.repeats)),
            ("ours, fused (optim.fused_adamw)", jax_update(True, shapes, args.repeats)),
            ("torch clip_grad_norm_ + AdamW(fused=True)", torch_update(shapes, args.repeats))]
    for name, (best, median) in rows:
        print(f"  {name:44s} {best:.3f} / {median:.3f}")


if __name__ == "__main__":
    main()
