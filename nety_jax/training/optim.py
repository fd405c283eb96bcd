"""Optax optimizer and learning-rate schedules from the train config."""
from __future__ import annotations

import functools

import jax.numpy as jnp
import optax

from nety_jax.config.sections import TrainConfig


def make_schedule(cfg: TrainConfig) -> optax.Schedule:
    peak, warmup = cfg.learning_rate, cfg.warmup_steps
    end = peak * cfg.end_lr_fraction
    if cfg.schedule == "constant":
        if warmup == 0:
            return optax.constant_schedule(peak)
        return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup),
                                     optax.constant_schedule(peak)], [warmup])
    if cfg.schedule == "linear":
        return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup),
                                     optax.linear_schedule(peak, end, max(cfg.steps - warmup, 1))],
                                    [warmup])
    if cfg.schedule == "warmup_cosine":
        # decay_steps counts the warmup steps too (optax's convention)
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, cfg.steps, end)
    # warmup + inverse square root (the original Transformer's shape)
    w = max(warmup, 1)

    def rsqrt(step):
        step = jnp.asarray(step, jnp.float32) + 1.0
        return peak * jnp.minimum(step / w, jnp.sqrt(w / step))
    return rsqrt


@functools.lru_cache(maxsize=16)
def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """The optimizer of ``cfg``: the same object for an equal config, so that the train states of
    equal configs have the same structure (it is a static field of TrainState) and a step jitted
    for one serves the other."""
    schedule = make_schedule(cfg)
    if cfg.optimizer == "adamw":
        opt = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
    else:
        opt = optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    if cfg.clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt)
    return opt
