"""Analytic FLOP and byte counts of the decoder-only GPT (``models/flops.py``'s rules)."""
from __future__ import annotations

from nety_jax.models.flops import TRAIN_FACTOR, attention_self, dense, feed_forward


def gpt_forward_flops(m, batch: int, length: int) -> dict:
    """Forward FLOPs of the GPT on ``batch`` sequences of ``length`` tokens: every layer's
    attention (the full T x T scores, as computed) and feed-forward, and the output head."""
    d = m.d_model
    per_layer = batch * attention_self(length, length, d) + feed_forward(batch * length, d, m.d_ff)
    return {"layers": m.layers * per_layer, "output projection": dense(batch * length, d, m.vocab_size)}


def gpt_train_step_flops(m, batch: int, length: int) -> float:
    """Forward + backward (3x forward) FLOPs of one GPT training step."""
    return TRAIN_FACTOR * sum(gpt_forward_flops(m, batch, length).values())


def gpt_generate_flops(m, batch: int, prompt_len: int, new_tokens: int) -> float:
    """One generate call: the prompt's prefill (its last position's logits only), then
    ``new_tokens - 1`` cached steps, each attending to the positions written so far."""
    d = m.d_model
    prefill = gpt_forward_flops(m, batch, prompt_len)
    total = prefill["layers"] + 2.0 * batch * d * m.vocab_size
    for t in range(prompt_len, prompt_len + new_tokens - 1):
        per_layer = 2.0 * batch * (4 * d * d + 2 * (t + 1) * d + 2 * d * m.d_ff)
        total += m.layers * per_layer + 2.0 * batch * d * m.vocab_size
    return total


def gpt_decode_weight_bytes(m, bytes_per_param: int = 4) -> float:
    """Parameters one GPT decode step reads (batch 1): every layer's projections, biases and
    norms, the final norm and the output head (the tied embedding when tied); one embedding
    and one position row are negligible."""
    d = m.d_model
    per_layer = 4 * d * d + (3 * d if m.qkv_bias else 0) + d + 2 * d * m.d_ff + m.d_ff + d + 2 * 2 * d
    head = d * m.vocab_size + (m.vocab_size if m.output_bias else 0)
    return bytes_per_param * (m.layers * per_layer + 2 * d + head)
