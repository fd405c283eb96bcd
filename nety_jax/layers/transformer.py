"""The Transformer decoder shared by the hybrid (with cross-attention) and the GPT (without).

Layers are PyTorch's ``TransformerDecoderLayer`` (post-norm) or pre-norm blocks:
self-attention, optional cross-attention, feed-forward, each with its norm
(``norm1``, ``norm2``, ``norm3``) and dropout. The decoder adds token embeddings
(optionally scaled by sqrt(d_model), as NETY), sinusoidal or learned positions,
a final norm (pre-norm) and an output head (its own ``fc_out`` or the tied
embedding).

The KV cache is an explicit pytree, not a flax collection, so it lives in a
``lax.while_loop`` state and beam search reorders it (every leaf has the batch
first)::

    {"pos": (B,) int32,        # positions written so far, per row
     "layers": ({"k", "v": (B, H, L, Dh),
                 "cross": {"k", "v", "mask"} or {"out"} (memory of length 1)}, ...)}

A ``decode`` call writes T tokens per row at that row's position; prompts of
different lengths are right-padded and ``lengths`` says where each row stops.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nety_jax import kernels
from nety_jax.layers.attention import CrossAttention, SelfAttention
from nety_jax.layers.dropout import Dropout
from nety_jax.layers.feedforward import FeedForward
from nety_jax.layers.linear import Linear
from nety_jax.layers.losses import head_cross_entropy_sums
from nety_jax.layers.partitioning import embedding, layer_norm, named
from nety_jax.layers.positions import Positions
from nety_jax.layers.remat import checkpointed


@dataclasses.dataclass(frozen=True)
class DecoderSpec:
    vocab_size: int
    d_model: int
    heads: int
    layers: int
    d_ff: int
    max_len: int
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation: str = "relu"
    norm: str = "post"  # post (PyTorch's default) | pre
    positions: str = "sinusoidal"  # sinusoidal | learned
    embed_scale: bool = True  # token embeddings times sqrt(d_model) (NETY)
    qkv_bias: bool = True
    cross_attention: bool = True
    tie_output: bool = False
    output_bias: bool = True
    dtype: str = "float32"
    eps: float = 1e-5
    quant: str = "none"  # none | int8 (weight-only)
    blocked_ids: tuple = ()  # output ids whose logits are -1e9 (special ids a vocabulary lacks)
    remat: str = "none"  # each layer's rematerialisation in training (layers/remat.py)

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)


class DecoderLayer(nn.Module):
    spec: DecoderSpec

    def setup(self):
        s = self.spec
        dtype = s.compute_dtype
        self.self_attn = SelfAttention(s.d_model, s.heads, s.attention_dropout, s.qkv_bias, dtype, s.quant,
                                      causal=True)
        if s.cross_attention:
            self.cross_attn = CrossAttention(s.d_model, s.heads, s.attention_dropout, dtype, s.quant)
            self.norm2 = layer_norm(s.eps)
        self.ffn = FeedForward(s.d_model, s.d_ff, s.dropout, s.activation, dtype, s.quant)
        self.norm1 = layer_norm(s.eps)
        self.norm3 = layer_norm(s.eps)
        self.drop = Dropout(s.dropout)

    def _block(self, x, norm, fn, det):
        if self.spec.norm == "pre":
            return x + self.drop(fn(norm(x)), deterministic=det).astype(x.dtype)
        return norm(x + self.drop(fn(x), deterministic=det).astype(x.dtype)).astype(x.dtype)

    def __call__(self, x, self_mask=None, memory=None, memory_mask=None, deterministic=True):
        """Teacher forcing over the whole (B, T, D) sequence, causally (``self_mask``: a further
        self-attention mask, None for none)."""
        x = self._block(x, self.norm1, lambda h: self.self_attn(h, self_mask, deterministic),
                        deterministic)
        if self.spec.cross_attention:
            x = self._block(x, self.norm2, lambda h: self.cross_attn(
                h, memory, memory_mask[:, None, None, :], deterministic), deterministic)
        return self._block(x, self.norm3, lambda h: self.ffn(h, deterministic), deterministic)

    def precompute(self, memory, memory_mask) -> dict:
        return self.cross_attn.precompute(memory, memory_mask)

    def cached(self, x, cache: dict, pos: jax.Array):
        """Decoding: x (B, T, D) at per-row positions ``pos``; returns (x, updated cache)."""
        new = {}

        def self_attention(h):
            out, kv = self.self_attn.cached(h, cache, pos)
            new.update(kv)
            return out

        x = self._block(x, self.norm1, self_attention, True)
        if self.spec.cross_attention:
            x = self._block(x, self.norm2, lambda h: self.cross_attn.cached(h, cache["cross"]), True)
            new["cross"] = cache["cross"]
        return self._block(x, self.norm3, lambda h: self.ffn(h, True), True), new


def grow_cache(cache: dict, extra: int) -> dict:
    """A decoding cache (``init_cache``) with ``extra`` more self-attention positions."""
    pad = lambda x: jnp.pad(x, ((0, 0), (0, 0), (0, extra), (0, 0)))
    layers = tuple({**entry, "k": pad(entry["k"]), "v": pad(entry["v"])} for entry in cache["layers"])
    return {**cache, "layers": layers}


def rewind_cache(cache: dict, pos: jax.Array) -> dict:
    """The cache with each row's positions from ``pos`` (B,) on forgotten: attention reads a
    row's first ``pos`` entries only, and the next ``decode`` overwrites the rest."""
    return {**cache, "pos": pos.astype(cache["pos"].dtype)}


class TransformerDecoder(nn.Module):
    spec: DecoderSpec

    def setup(self):
        s = self.spec
        self.embed = embedding(s.vocab_size, s.d_model)
        self.pos_embed = Positions(s.positions, s.max_len, s.d_model)
        layer = checkpointed(DecoderLayer, s.remat, static_argnums=(5,))  # 5: deterministic
        self.layers = [layer(s) for _ in range(s.layers)]
        self.drop = Dropout(s.dropout)
        if s.norm == "pre":
            self.final_norm = layer_norm(s.eps)
        if not s.tie_output:
            self.fc_out = Linear(s.vocab_size, use_bias=s.output_bias, dtype=s.compute_dtype, quant=s.quant,
                                 axes=("embed", "vocab"))
        elif s.output_bias:
            self.out_bias = self.param("out_bias", named(nn.initializers.zeros, ("vocab",)), (s.vocab_size,))

    def embed_tokens(self, tokens, positions, deterministic: bool):
        s = self.spec
        x = self.embed(tokens)
        if s.embed_scale:
            x = x * math.sqrt(s.d_model)
        x = x + self.pos_embed(positions)
        return self.drop(x, deterministic=deterministic).astype(s.compute_dtype)

    def head_input(self, x):
        """The last hidden states as the output head sees them (the final norm of pre-norm)."""
        return self.final_norm(x) if self.spec.norm == "pre" else x

    def logits(self, x):
        s = self.spec
        x = self.head_input(x)
        if s.tie_output:  # the embedding table as the head, in the compute dtype like every product
            table = self.embed.embedding.astype(s.compute_dtype)
            x = x.astype(s.compute_dtype)
            if kernels.matmul_t_usable(x, table):  # a few rows (a decode step, a verification): every core
                logits = kernels.matmul_t(x, table)
            else:
                logits = jnp.dot(x, table.T).astype(jnp.float32)
            logits = logits + self.out_bias if s.output_bias else logits
        else:
            logits = self.fc_out(x).astype(jnp.float32)
        if s.blocked_ids:
            blocked = np.zeros(s.vocab_size, bool)
            blocked[list(s.blocked_ids)] = True
            logits = jnp.where(blocked, -1e9, logits)
        return logits

    def fused_head_applies(self) -> bool:
        """Whether ``loss_sums`` can skip the logits (``losses.head_cross_entropy_sums``): a
        float32 head that is not int8-quantized."""
        s = self.spec
        return s.compute_dtype == jnp.float32 and s.quant == "none"

    def loss_sums(self, tokens, targets, mask, train: bool = False,
                  segments: Optional[jax.Array] = None, positions: Optional[jax.Array] = None):
        """Teacher forcing straight to ``cross_entropy_sums`` (no label smoothing) without the
        (B, T, V) logits: the output head and the loss run a chunk of rows at a time."""
        s = self.spec
        x = self.head_input(self.features(tokens, None, None, train, segments, positions))
        if s.tie_output:
            weight, bias = self.embed.embedding, (self.out_bias if s.output_bias else None)
        else:
            params = self.fc_out.variables["params"]
            weight, bias = params["kernel"], params.get("bias")
        return head_cross_entropy_sums(x.astype(jnp.float32), weight, bias, targets, mask,
                                       transposed=s.tie_output, blocked=s.blocked_ids)

    def hidden(self, x, memory=None, memory_mask=None, train: bool = False,
               segments: Optional[jax.Array] = None):
        """The causal stack on already embedded inputs (B, T, D), positions included;
        ``segments`` (B, T): a token attends only within its own segment (packed rows)."""
        mask = None  # causality is the self-attention's own
        if segments is not None:
            mask = segments[:, None, :, None] == segments[:, None, None, :]
        for layer in self.layers:
            x = layer(x, mask, memory, memory_mask, not train)  # positional: static under remat
        return x

    def features(self, tokens, memory=None, memory_mask=None, train: bool = False,
                 segments: Optional[jax.Array] = None, positions: Optional[jax.Array] = None):
        """Teacher forcing: (B, T) tokens -> (B, T, D) last hidden states under a causal mask;
        packed rows give ``segments`` and each token's ``positions`` in its segment (B, T)."""
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        x = self.embed_tokens(tokens, positions, not train)
        return self.hidden(x, memory, memory_mask, train, segments)

    def __call__(self, tokens, memory=None, memory_mask=None, train: bool = False,
                 segments: Optional[jax.Array] = None, positions: Optional[jax.Array] = None):
        """Teacher forcing: (B, T) tokens -> (B, T, V) float32 logits under a causal mask."""
        return self.logits(self.features(tokens, memory, memory_mask, train, segments, positions))

    def init_cache(self, batch: int, max_len: int, memory=None, memory_mask=None,
                   cross: Optional[tuple] = None) -> dict:
        """An empty self-attention cache; ``cross``: each layer's cross-attention entry as an
        earlier cache kept it (the memory is then not read again)."""
        s = self.spec
        shape = (batch, s.heads, max_len, s.d_model // s.heads)
        layers = []
        for i, layer in enumerate(self.layers):
            entry = {"k": jnp.zeros(shape, s.compute_dtype), "v": jnp.zeros(shape, s.compute_dtype)}
            if s.cross_attention:
                entry["cross"] = layer.precompute(memory, memory_mask) if cross is None else cross[i]
            layers.append(entry)
        return {"pos": jnp.zeros((batch,), jnp.int32), "layers": tuple(layers)}

    def decode(self, tokens, cache: dict, lengths: Optional[jax.Array] = None,
               last_only: bool = False):
        """(B, T) tokens at each row's next positions -> (logits, cache); see ``decode_features``."""
        x, cache = self.decode_features(tokens, cache, lengths, last_only)
        return self.logits(x), cache

    def decode_features(self, tokens, cache: dict, lengths: Optional[jax.Array] = None,
                        last_only: bool = False):
        """(B, T) tokens at each row's next positions -> (last hidden states, cache).

        ``lengths`` (B,): how many of the T tokens are real per row (right padding);
        the positions advance by that much, and ``last_only`` returns the states of each
        row's last real token only, (B, 1, D), instead of (B, T, D). The cache must have
        room for the tokens.
        """
        pos = cache["pos"]
        t = tokens.shape[1]
        positions = pos[:, None] + jnp.arange(t)[None, :]
        x = self.embed_tokens(tokens, positions, True)
        layers = []
        for layer, entry in zip(self.layers, cache["layers"]):
            x, entry = layer.cached(x, entry, pos)
            layers.append(entry)
        advance = jnp.full_like(pos, t) if lengths is None else lengths.astype(pos.dtype)
        if last_only:
            x = jnp.take_along_axis(x, jnp.maximum(advance, 1)[:, None, None] - 1, axis=1)
        return x, {"pos": pos + advance, "layers": tuple(layers)}
