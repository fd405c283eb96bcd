"""Masked, optionally label-smoothed cross-entropy returned as sums and a count."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from nety_jax.config import PAD_ID


def token_mask(batch: dict) -> jax.Array:
    """1.0 at real target tokens, times the per-row ``weight`` when the batch has one."""
    mask = (batch["tgt_out"] != PAD_ID).astype(jnp.float32)
    if "weight" in batch:
        mask = mask * batch["weight"][:, None]
    return mask


def cross_entropy_sums(logits, targets, mask, label_smoothing: float = 0.0) -> dict:
    """Sums over real tokens: the training loss, the plain NLL, correct tokens, and the count.

    Smoothing spreads ``label_smoothing`` uniformly over the vocabulary (optax.smooth_labels);
    pads are excluded by ``mask`` and never enter the sums.
    """
    logits = logits.astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    if label_smoothing > 0.0:
        labels = optax.smooth_labels(jax.nn.one_hot(targets, logits.shape[-1]), label_smoothing)
        loss = optax.softmax_cross_entropy(logits, labels)
    else:
        loss = nll
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
    return {"loss_sum": jnp.sum(loss * mask), "nll_sum": jnp.sum(nll * mask),
            "correct": jnp.sum(correct * mask), "tokens": jnp.sum(mask)}
