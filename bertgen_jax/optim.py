"""The original's optimizer: AdamW with decoupled weight decay, linear warm-up then linear
decay to zero, global grad-norm clipping; the learning rate absolute or scaled by the batch."""

from __future__ import annotations

import jax
import optax

LR_RULES = ("absolute", "scaled")


def peak_learning_rate(optim, rows_per_step: int) -> float:
    """`absolute`: optim.lr as given. `scaled`: the original's rule, a base rate times the total
    batch; our batch unit is the row (one unrolled example per row in `faithful` mode, exactly
    the original's batch; in `packed` mode a row holds several examples, so pick base_lr for that)."""
    if optim.lr_rule == "absolute":
        return float(optim.lr)
    if optim.lr_rule == "scaled":
        return float(optim.base_lr) * rows_per_step
    raise ValueError(f"optim.lr_rule={optim.lr_rule!r}: expected one of {LR_RULES}")


def schedule(peak: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
    """0 -> peak linearly over warmup_steps, then linearly to 0 at total_steps."""
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"need 0 <= warmup_steps ({warmup_steps}) <= total steps ({total_steps})")
    if warmup_steps == total_steps:
        return optax.linear_schedule(0.0, peak, max(warmup_steps, 1))
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup_steps),
         optax.linear_schedule(peak, 0.0, total_steps - warmup_steps)], [warmup_steps])


def make_optimizer(optim, lr: optax.Schedule) -> optax.GradientTransformation:
    """Clip the global gradient norm, then AdamW. optax's decay is lr x wd x param, applied
    apart from the Adam moments: torch.optim.AdamW's decoupled form. Every parameter decays
    unless optim.decay_norms_and_biases is False (REFERENCE.md names no exclusion)."""
    mask = None if optim.decay_norms_and_biases else _no_norms_or_biases
    parts = [optax.clip_by_global_norm(optim.clip_norm)] if optim.clip_norm > 0 else []
    parts.append(optax.adamw(lr, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                             weight_decay=optim.weight_decay, mask=mask))
    return optax.chain(*parts)


def _no_norms_or_biases(params):
    """True for the parameters that decay: all but biases and LayerNorm scales."""
    def decays(path, _):
        name = str(getattr(path[-1], "key", path[-1]))
        return name not in ("bias", "scale")
    return jax.tree_util.tree_map_with_path(decays, params)
