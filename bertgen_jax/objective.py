"""The training objective: cross-entropy at each `[MASK]`, mean over real targets."""

import jax.numpy as jnp
import optax


def per_target_loss(model, batch):
    """(loss [B, P], correct [B, P]) at the rows' `[MASK]` slots; padded slots included."""
    logits = model(batch, batch["mask_positions"])  # [B, P, V] float32, head only at [MASK]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
    correct = (jnp.argmax(logits, -1) == batch["labels"]).astype(jnp.float32)
    return loss, correct


def mean_loss(model, batch):
    """Mean cross-entropy over real targets (no label smoothing, as the original) and accuracy."""
    loss, correct = per_target_loss(model, batch)
    w = batch["label_weights"]
    n = jnp.maximum(jnp.sum(w), 1.0)
    return jnp.sum(loss * w) / n, {"accuracy": jnp.sum(correct * w) / n, "targets": jnp.sum(w)}
