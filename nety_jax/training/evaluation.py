"""Validation: teacher-forced loss, perplexity and accuracy; for seq2seq models also greedy
replies to validation sources scored with sacreBLEU (BLEU and chrF)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from nety_jax.config import Config
from nety_jax.data.batching import eval_batches
from nety_jax.data.prompts import decode_replies
from nety_jax.decoding import LoopSpec, SamplingParams, generate_jit
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


def greedy_replies(model, variables, src, src_len, max_new_tokens: int) -> np.ndarray:
    spec = LoopSpec(max_new_tokens=max_new_tokens)
    params = SamplingParams.create(src.shape[0], temperature=0.0)
    out = generate_jit(variables, jnp.asarray(src), jnp.asarray(src_len), params, model=model, spec=spec)
    return np.asarray(out["tokens"])


def reply_scores(model, variables, cfg: Config, tokenizer, val_data) -> dict:
    """BLEU and chrF of greedy replies to the first ``train.bleu_samples`` validation sources."""
    n = min(cfg.train.bleu_samples, len(val_data))
    if model.task != "seq2seq" or n == 0:
        return {}
    import sacrebleu
    batch = eval_batches(val_data, n, limit=1)[0]
    max_new = min(cfg.decode.max_new_tokens, cfg.data.max_tgt_len)
    tokens = greedy_replies(model, local(variables), batch["src"], batch["src_len"], max_new)
    hyps = decode_replies(tokenizer, tokens, n)
    refs = [tokenizer.decode(batch["targets"][i].tolist()) for i in range(n)]
    return {"bleu": sacrebleu.corpus_bleu(hyps, [refs]).score,
            "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score}
