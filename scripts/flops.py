"""Analytic FLOP and byte counts of the hybrid, layer by layer (for MFU and bandwidth bounds).

One multiply-add is 2 FLOPs. Training counts the forward pass and twice that for the
backward (3x forward; embedding lookups and elementwise work are not counted). Only
the work the model needs is counted: with a one-vector memory (NETY's pooled memory)
cross-attention is out(v(memory)) per sequence, not a per-token attention, so a
program that does more (NETY's PyTorch) gets no credit for it.
"""
from __future__ import annotations


def _attention_self(tokens: int, length: int, d: int) -> float:
    """q, k, v and output projections for ``tokens`` queries, plus scores and the weighted sum
    over ``length`` keys each."""
    return 2 * (4 * tokens * d * d + 2 * tokens * length * d)


def _memory_len(m, src_len: int) -> int:
    if m.memory == "pooled":
        return 1
    return src_len + (1 if m.memory_prepend_pooled else 0)


def encoder_flops(m, batch: int, src_len: int) -> dict:
    """Forward FLOPs of the encoder for ``batch`` sources of ``src_len`` tokens."""
    d, h = m.d_model, m.enc_hidden
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[m.cell] * h
    dirs = 2 if m.bidirectional else 1
    out = {"encoder attention": batch * _attention_self(src_len, src_len, d)}
    width = d
    for layer in range(m.enc_layers):
        per_token = dirs * (width * gates + h * gates)  # input and hidden projections
        out[f"encoder rnn l{layer}"] = 2.0 * batch * src_len * per_token
        width = dirs * h
    dims = [width] + list(m.head_dims) + [d]
    out["encoder head"] = 2.0 * batch * sum(a * b for a, b in zip(dims[:-1], dims[1:]))
    if m.memory != "pooled":
        out["memory projection"] = 2.0 * batch * src_len * width * d
    return out


def _cross(m, batch: int, queries: int, mem: int) -> float:
    d = m.d_model
    if mem == 1:  # out(v(memory)) once per sequence
        return 2.0 * batch * 2 * d * d
    kv = 2.0 * batch * mem * 2 * d * d  # memory keys and values, once per sequence
    return kv + 2.0 * batch * (2 * queries * d * d + 2 * queries * mem * d)


def decoder_train_flops(m, batch: int, tgt_len: int, src_len: int) -> dict:
    d, mem = m.d_model, _memory_len(m, src_len)
    per_layer = (batch * _attention_self(tgt_len, tgt_len, d) + _cross(m, batch, tgt_len, mem)
                 + 2.0 * batch * tgt_len * 2 * d * m.d_ff)
    return {"decoder layers": m.dec_layers * per_layer,
            "output projection": 2.0 * batch * tgt_len * d * m.vocab_size}


def train_step_flops(m, batch: int, src_len: int, tgt_len: int) -> dict:
    """Per component: forward FLOPs; ``total`` is forward + backward (3x forward)."""
    parts = {**encoder_flops(m, batch, src_len), **decoder_train_flops(m, batch, tgt_len, src_len)}
    return {**parts, "total": 3.0 * sum(parts.values())}


def generate_flops(m, batch: int, src_len: int, new_tokens: int) -> float:
    """FLOPs of one generate call: the encoder once, then ``new_tokens`` cached decode steps
    (each step attends to the positions written so far)."""
    d, mem = m.d_model, _memory_len(m, src_len)
    total = sum(encoder_flops(m, batch, src_len).values())
    total += m.dec_layers * _cross(m, batch, 0, mem) if mem == 1 else m.dec_layers * 2.0 * batch * mem * 2 * d * d
    for t in range(new_tokens):
        per_layer = 2.0 * batch * (4 * d * d + 2 * (t + 1) * d + 2 * d * m.d_ff)
        if mem > 1:
            per_layer += 2.0 * batch * (2 * d * d + 2 * mem * d)
        total += m.dec_layers * per_layer + 2.0 * batch * d * m.vocab_size
    return total


def decode_weight_bytes(m, bytes_per_param: int = 4) -> float:
    """Parameters one decode step must read (batch 1): the decoder layers' self-attention,
    feed-forward and norms (cross-attention too unless the memory is one vector), and the
    output projection; one embedding row is negligible."""
    d = m.d_model
    per_layer = 4 * d * d + 4 * d + 2 * d * m.d_ff + m.d_ff + d + 3 * 2 * d
    if m.memory != "pooled":
        per_layer += 2 * d * d + 2 * d
    return bytes_per_param * (m.dec_layers * per_layer + d * m.vocab_size + m.vocab_size)


# -- the decoder-only GPT --------------------------------------------------------------------------
def gpt_forward_flops(m, batch: int, length: int) -> dict:
    """Forward FLOPs of the GPT on ``batch`` sequences of ``length`` tokens: every layer's
    attention (the full T x T scores, as computed) and feed-forward, and the output head."""
    d = m.d_model
    per_layer = batch * _attention_self(length, length, d) + 2.0 * batch * length * 2 * d * m.d_ff
    return {"layers": m.layers * per_layer, "output projection": 2.0 * batch * length * d * m.vocab_size}


def gpt_train_step_flops(m, batch: int, length: int) -> float:
    """Forward + backward (3x forward) FLOPs of one GPT training step."""
    return 3.0 * sum(gpt_forward_flops(m, batch, length).values())


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
