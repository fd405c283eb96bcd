"""Analytic FLOP and byte counts of the hybrid, layer by layer (``models/flops.py``'s rules).

With a one-vector memory (NETY's pooled memory) cross-attention is out(v(memory)) per
sequence, not a per-token attention, so a program that does more (NETY's PyTorch) gets no
credit for it. The pointer-generator head (``model.copy``) is not counted.
"""
from __future__ import annotations

from nety_jax.models.flops import TRAIN_FACTOR, attention_self, dense, feed_forward, recurrent_layer


def _memory_len(m, src_len: int) -> int:
    if m.memory == "pooled":
        return 1
    return src_len + (1 if m.memory_prepend_pooled else 0)


def encoder_flops(m, batch: int, src_len: int) -> dict:
    """Forward FLOPs of the encoder for ``batch`` sources of ``src_len`` tokens."""
    d, h = m.d_model, m.enc_hidden
    dirs = 2 if m.bidirectional else 1
    out = {"encoder attention": batch * attention_self(src_len, src_len, d)}
    width = d
    for layer in range(m.enc_layers):
        out[f"encoder rnn l{layer}"] = recurrent_layer(m.cell, width, h, batch * src_len, dirs)
        width = dirs * h
    dims = [width] + list(m.head_dims) + [d]
    out["encoder head"] = sum(dense(batch, a, b) for a, b in zip(dims[:-1], dims[1:]))
    if m.memory != "pooled":
        out["memory projection"] = dense(batch * src_len, width, d)
    return out


def _cross(m, batch: int, queries: int, mem: int) -> float:
    d = m.d_model
    if mem == 1:  # out(v(memory)) once per sequence
        return 2.0 * batch * 2 * d * d
    kv = 2.0 * batch * mem * 2 * d * d  # memory keys and values, once per sequence
    return kv + 2.0 * batch * (2 * queries * d * d + 2 * queries * mem * d)


def decoder_train_flops(m, batch: int, tgt_len: int, src_len: int) -> dict:
    d, mem = m.d_model, _memory_len(m, src_len)
    per_layer = (batch * attention_self(tgt_len, tgt_len, d) + _cross(m, batch, tgt_len, mem)
                 + feed_forward(batch * tgt_len, d, m.d_ff))
    return {"decoder layers": m.dec_layers * per_layer,
            "output projection": dense(batch * tgt_len, d, m.vocab_size)}


def train_step_flops(m, batch: int, src_len: int, tgt_len: int) -> dict:
    """Per component: forward FLOPs; ``total`` is forward + backward (3x forward)."""
    parts = {**encoder_flops(m, batch, src_len), **decoder_train_flops(m, batch, tgt_len, src_len)}
    return {**parts, "total": TRAIN_FACTOR * sum(parts.values())}


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
