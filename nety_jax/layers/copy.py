"""``CopyHead``: a pointer-generator output (See et al., 2017, "Get To The Point").

The decoder's next-token distribution becomes a mixture of two:

    p(w) = g * softmax(logits)(w) + (1 - g) * sum of a_m over the memory positions m whose id is w

where ``a`` is one attention distribution of the decoder state over the memory positions that
carry a token (the source), and ``g`` (the generation gate) comes from the decoder state and the
attended memory. A word of the source that the vocabulary model gives little probability (a name,
a word never seen in training) can then be copied whole. The output is log p: a float32 (B, T, V)
array that every consumer of logits (losses, sampling, beam search) uses unchanged, since a
softmax of log-probabilities gives them back.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nety_jax.config.sections import PAD_ID
from nety_jax.layers.linear import Linear

# A memory position's copy probability is added to this floor before the log: a position the
# pointer cannot read (padding, the pooled vector) has 0, and its log and gradients stay finite.
TINY = 1e-12


def copy_at_positions(weights: jax.Array, ids: jax.Array) -> jax.Array:
    """(B, T, M) weights of memory positions with ids (B, M) -> (B, T, M): at each position, the
    summed weight of every position carrying its id (what a scatter into the vocabulary would
    hold at that id, read back without building the (B, T, V) array)."""
    same = (ids[:, :, None] == ids[:, None, :]).astype(weights.dtype)
    return jnp.einsum("btm,bmn->btn", weights, same)


class CopyHead(nn.Module):
    d_model: int
    vocab_size: int
    dtype: Any = jnp.float32
    quant: str = "none"

    def setup(self):
        self.query = Linear(self.d_model, dtype=self.dtype, quant=self.quant, axes=("embed", "heads"))
        self.key = Linear(self.d_model, dtype=self.dtype, quant=self.quant, axes=("embed", "heads"))
        self.gate = Linear(1, dtype=self.dtype, quant=self.quant, axes=("embed", None))

    def prepare(self, memory, memory_mask, ids) -> dict:
        """What a decode step reuses: the memory's keys, the memory, the ids of its positions
        (B, M) and which of them can be copied (real source tokens)."""
        return {"keys": self.key(memory), "memory": memory, "ids": ids.astype(jnp.int32),
                "mask": memory_mask & (ids != PAD_ID)}

    def __call__(self, logits, hidden, pre: dict):
        """(B, T, V) vocabulary logits and the (B, T, D) states they came from -> (B, T, V) log p."""
        q = self.query(hidden).astype(jnp.float32)
        scores = jnp.einsum("btd,bmd->btm", q, pre["keys"].astype(jnp.float32)) / math.sqrt(self.d_model)
        mask = pre["mask"][:, None, :]
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
        attn = jax.nn.softmax(scores, axis=-1) * mask  # a source with no token: all zeros
        context = jnp.einsum("btm,bmd->btd", attn, pre["memory"].astype(jnp.float32))
        gate = self.gate(jnp.concatenate([hidden.astype(jnp.float32), context], axis=-1))
        gate = gate.astype(jnp.float32)
        can_copy = jnp.any(pre["mask"], axis=-1)[:, None, None]
        gate = jnp.where(can_copy, gate, 1e4)  # nothing to copy: the vocabulary alone
        vocab_logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1) + jax.nn.log_sigmoid(gate)
        # Only the ids of the memory's positions get a copy term: the mixture is computed at
        # those M positions and written over the vocabulary side there, instead of a (B, T, V)
        # scatter and two passes of logarithms over the whole vocabulary (docs/PERFORMANCE.md).
        # Positions of one id get the same value.
        ids = jnp.broadcast_to(pre["ids"][:, None, :], attn.shape)
        vocab_at = jnp.take_along_axis(vocab_logp, ids, axis=-1)
        copy_logp = jnp.log(copy_at_positions(attn, pre["ids"]) + TINY) + jax.nn.log_sigmoid(-gate)
        rows = jnp.arange(ids.shape[0])[:, None, None]
        steps = jnp.arange(ids.shape[1])[None, :, None]
        return vocab_logp.at[rows, steps, ids].set(jnp.logaddexp(vocab_at, copy_logp))
