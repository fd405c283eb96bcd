"""Validation: teacher-forced loss, perplexity and accuracy, and the task's own scores
(``Task.extra_metrics``: greedy replies to validation sources scored with sacreBLEU)."""
from __future__ import annotations

import math

import jax

from nety_jax.config import Config
from nety_jax.training.parallel import local


def evaluate(runner, state, batches: list[dict]) -> dict:
    total = None
    for batch in batches:
        sums = jax.device_get(local(runner.evaluate(state, batch)))
        total = sums if total is None else {k: total[k] + sums[k] for k in total}
    tokens = max(float(total["tokens"]), 1.0)
    loss = float(total["nll_sum"]) / tokens
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)),
            "accuracy": float(total["correct"]) / tokens}


def reply_scores(model, variables, cfg: Config, tokenizer, val_data) -> dict:
    """The task's scores beyond the loss (BLEU and chrF of greedy replies, for replies)."""
    return model.task.extra_metrics(model, local(variables), cfg, tokenizer, val_data)
