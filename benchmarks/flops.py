"""Useful model FLOPs of a training step and the machine's measured peak matmul FLOP/s (the
numerator and denominator of the MFU that benchmarks/run.py reports), and per-phase timings
of each side's step (where the time goes).

"Useful" means the work the model defines for the unrolled examples themselves, whatever an
implementation spends on padding, on the MLM head away from `[MASK]` or on attention across
packed neighbours. Per example of S present tokens (text + regions + `[END]`), one target:

    encoder matmuls   6 * L * (4 H^2 + 2 H I) * S      (weights: 2 per MAC forward, 4 backward)
    attention         12 * L * S^2 * H                 (QK^T and PV: 4 S^2 H forward, x3 with backward)
    MLM head          6 * (H^2 + H V)                  (transform + tied decoder, at [MASK] only)

Not counted: embedding lookups, LayerNorm / GELU / softmax (not matmuls), and the RoI
projection (4096 x H per region). The last is real work, but how much of it is useful
depends on whether examples of one image share it (ours do, the original does not); leaving it
out understates every MFU here, ours and the reference's alike (about 3% of the work at base
size, much more at tiny size where H is small against the 4096-wide RoI input).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np

from bertgen_jax.model import ModelConfig


def encoder_matmul_params(cfg: ModelConfig) -> int:
    """Weights each token is multiplied by in the encoder: Q, K, V, O and the two FFN matrices."""
    h, i = cfg.hidden_size, cfg.intermediate_size
    return cfg.num_layers * (4 * h * h + 2 * h * i)


def head_matmul_params(cfg: ModelConfig) -> int:
    return cfg.hidden_size * cfg.hidden_size + cfg.hidden_size * cfg.vocab_size


def train_flops(cfg: ModelConfig, lengths: Iterable[int]) -> int:
    """Useful training FLOPs (forward + backward) of examples of these lengths, one target each."""
    s = np.asarray(list(lengths), np.int64)
    encoder = 6 * encoder_matmul_params(cfg) * int(s.sum())
    attention = 12 * cfg.num_layers * cfg.hidden_size * int((s * s).sum())
    return encoder + attention + 6 * head_matmul_params(cfg) * len(s)


def padded_step_flops(cfg: ModelConfig, rows: int, length: int) -> int:
    """What the original's step computes (forward + backward): `rows` rows of `length` tokens,
    padding included, and the MLM head at every one of those positions."""
    encoder = 6 * encoder_matmul_params(cfg) * rows * length
    attention = 12 * cfg.num_layers * cfg.hidden_size * rows * length ** 2
    return encoder + attention + 6 * head_matmul_params(cfg) * rows * length


def _best_rate(run, flops: float, repeats: int) -> float:
    """FLOP/s of the fastest of `repeats` timed runs: the machine is shared, so the best run is
    the one least disturbed by other jobs, the nearest to what the cores can do."""
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t)
    return flops / best


def peak_jax(n: int = 2048, repeats: int = 8, dtype: str = "float32") -> float:
    """FLOP/s of a jitted n^3 jnp.dot in `dtype` on JAX's default device, compiled and warmed
    first (f32 on a GPU: at the precision jax_default_matmul_precision gives it)."""
    import jax
    import jax.numpy as jnp
    rng = np.random.default_rng(0)
    a, b = (jnp.asarray(rng.random((n, n), np.float32), dtype=dtype) for _ in range(2))
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()
    return _best_rate(lambda: dot(a, b).block_until_ready(), 2.0 * n ** 3, repeats)


def peak_torch(n: int = 2048, repeats: int = 8, dtype: str = "float32", device: str = "cpu") -> float:
    """FLOP/s of an n^3 torch.mm in `dtype` on `device` (MKL / oneDNN on the CPU; cuBLAS, at
    torch's float32 matmul precision, on a GPU), warmed first, each run waited for."""
    import torch
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.rand(n, n, generator=gen).to(device=device, dtype=getattr(torch, dtype)) for _ in range(2))
    sync = torch.cuda.synchronize if a.is_cuda else (lambda: None)
    torch.mm(a, b)
    sync()
    return _best_rate(lambda: (torch.mm(a, b), sync()), 2.0 * n ** 3, repeats)


# -- where a step's time goes (run.py --phases) ----------------------------------------------

def _seconds(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def jax_phases(steps, params, opt_state, host, mesh) -> dict:
    """Seconds of the forward (loss) and of the forward + backward on one batch (median of 3
    after a compile), and the FLOPs XLA counts in the compiled train step."""
    import jax
    from flax import nnx

    from bertgen_jax import sharding
    from bertgen_jax.objective import mean_loss
    graphdef, weights, rngs = nnx.split(steps.model(params, train=True), nnx.Param, ...)
    micro = sharding.global_batch(host, mesh, 0)
    # Fresh copies of the dropout streams inside the trace: nnx advances only streams made at
    # the trace level it runs at (so neither closed-over nor jit-level ones under grad).
    loss = lambda w, r, b: mean_loss(nnx.merge(graphdef, w, jax.tree.map(lambda x: x, r)), b)[0]
    fns = {"forward": jax.jit(loss), "forward_backward": jax.jit(jax.grad(loss))}
    out = {}
    for name, fn in fns.items():
        jax.block_until_ready(fn(weights, rngs, micro))
        out[name] = float(np.median([_seconds(lambda: jax.block_until_ready(fn(weights, rngs, micro)))
                                     for _ in range(3)]))
    stacked = sharding.global_batch({k: v[None] for k, v in host.items()}, mesh, 1)
    compiled = steps.train.lower(params, opt_state, stacked, 0).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    out["xla_step_flops"] = float(cost.get("flops", float("nan")))
    return out


def torch_phases(model, opt, batch) -> dict:
    """torch_reference.train_step's parts, timed apart (median of 3): forward + loss, backward,
    clip + AdamW."""
    import torch
    import torch.nn.functional as F

    from benchmarks import torch_reference as T
    parts = {"forward": [], "backward": [], "optimizer": []}
    for _ in range(3):
        t0 = time.perf_counter()
        logits = model(batch)
        targets = torch.full(logits.shape[:2], T.IGNORE, dtype=torch.long, device=logits.device)
        targets[torch.arange(logits.shape[0], device=logits.device), batch["mask_index"]] = batch["labels"]
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=T.IGNORE)
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        t3 = time.perf_counter()
        for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2)):
            parts[k].append(v)
    return {k: float(np.median(v)) for k, v in parts.items()}
