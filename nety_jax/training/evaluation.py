"""Validation: teacher-forced loss, perplexity and accuracy, and the task's own scores
(``Task.extra_metrics``: greedy replies to validation sources scored with sacreBLEU)."""
from __future__ import annotations

import math

import jax
import numpy as np

from nety_jax.config import Config
from nety_jax.training.parallel import local


def scorable_tokens(batches: list[dict]) -> int:
    """The target tokens validation scores in ``batches`` (the denominator of its loss)."""
    from nety_jax.layers.losses import token_mask
    return int(sum(float(np.sum(np.asarray(token_mask(b)))) for b in batches))


def validation_batches(batches: list[dict], items: int, log) -> list[dict]:
    """``batches``, or none when they hold no token to score (a tiny text's split): a loss over
    0 tokens would read 0 (perplexity 1) and pick the best checkpoint; nothing is evaluated."""
    if batches and scorable_tokens(batches) == 0:
        log(f"validation: the validation split ({items} item{'s' * (items != 1)}) has no tokens to "
            "score; nothing is evaluated and the best checkpoint is not chosen by it (give more data "
            "or a larger data.val_fraction)")
        return []
    return batches


def evaluate(runner, state, batches: list[dict]) -> dict:
    """Loss, perplexity and accuracy over ``batches``; {} when they hold no token to score."""
    total = None
    for batch in batches:
        sums = jax.device_get(local(runner.evaluate(state, batch)))
        total = sums if total is None else {k: total[k] + sums[k] for k in total}
    if total is None or float(total["tokens"]) <= 0:
        return {}
    tokens = float(total["tokens"])
    loss = float(total["nll_sum"]) / tokens
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)),
            "accuracy": float(total["correct"]) / tokens}


def reply_scores(model, variables, cfg: Config, tokenizer, val_data) -> dict:
    """The task's scores beyond the loss (BLEU and chrF of greedy replies, for replies)."""
    return model.task.extra_metrics(model, local(variables), cfg, tokenizer, val_data)
