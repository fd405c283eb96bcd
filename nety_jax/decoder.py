"""Transformer decoder: PyTorch's TransformerDecoderLayer (post-norm) or pre-norm, with a KV cache.

The cache is an explicit pytree, not a flax collection, so it can live in a
``lax.while_loop`` state and be reordered by beam search::

    {"index": int32 scalar,          # positions already written
     "memory_mask": (B, M) bool,
     "layers": ({"k", "v": (B, L, H, Dh) self-attention keys / values,
                 "ck", "cv": (B, M, H, Dh) cross-attention keys / values}, ...)}

Cross-attention keys and values are computed once, in ``init_cache``. A call to
``decode_step`` may feed several tokens at once (a prompt) or one.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import flax.linen as nn

from nety_jax.config import ModelConfig
from nety_jax.layers import FeedForward, MultiHeadAttention, sinusoidal_table


class DecoderLayer(nn.Module):
    cfg: ModelConfig

    def setup(self):
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.dec_heads, cfg.attention_dropout, dtype)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.dec_heads, cfg.attention_dropout, dtype)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout, dtype)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(epsilon=1e-5) for _ in range(3))
        self.drop = nn.Dropout(cfg.dropout)

    def cross_kv(self, memory):
        return self.cross_attn.project_kv(memory)

    def _block(self, x, norm, fn, det):
        if self.cfg.norm == "pre":
            return x + self.drop(fn(norm(x)), deterministic=det)
        return norm(x + self.drop(fn(x), deterministic=det))

    def __call__(self, x, self_mask, cross_k, cross_v, cross_mask, cache=None, index=None,
                 deterministic=True):
        new_cache = None

        def self_attention(h):
            nonlocal new_cache
            k, v = self.self_attn.project_kv(h)
            if cache is not None:
                start = (0, index, 0, 0)
                k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), start)
                v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), start)
                new_cache = {**cache, "k": k, "v": v}
            return self.self_attn.attend(h, k, v, self_mask, deterministic)

        x = self._block(x, self.norm1, self_attention, deterministic)
        x = self._block(x, self.norm2, lambda h: self.cross_attn.attend(
            h, cross_k, cross_v, cross_mask, deterministic), deterministic)
        x = self._block(x, self.norm3, lambda h: self.ffn(h, deterministic), deterministic)
        return x, new_cache


class Decoder(nn.Module):
    cfg: ModelConfig

    def setup(self):
        cfg = self.cfg
        self.embed = nn.Embed(cfg.vocab_size, cfg.d_model)
        self.layers = [DecoderLayer(cfg) for _ in range(cfg.dec_layers)]
        self.drop = nn.Dropout(cfg.dropout)
        if cfg.norm == "pre":
            self.final_norm = nn.LayerNorm(epsilon=1e-5)
        if not cfg.tie_output:
            self.fc_out = nn.Dense(cfg.vocab_size, use_bias=cfg.output_bias,
                                   dtype=jnp.dtype(cfg.dtype))
        elif cfg.output_bias:
            self.out_bias = self.param("out_bias", nn.initializers.zeros, (cfg.vocab_size,))

    def _embed(self, tokens, start, deterministic):
        cfg = self.cfg
        pe = jnp.asarray(sinusoidal_table(cfg.max_len, cfg.d_model))
        pos = jax.lax.dynamic_slice_in_dim(pe, start, tokens.shape[1], axis=0)
        x = self.embed(tokens) * math.sqrt(cfg.d_model) + pos[None]
        return self.drop(x, deterministic=deterministic).astype(jnp.dtype(cfg.dtype))

    def _logits(self, x):
        if self.cfg.norm == "pre":
            x = self.final_norm(x)
        if self.cfg.tie_output:
            logits = self.embed.attend(x.astype(jnp.float32))
            return logits + self.out_bias if self.cfg.output_bias else logits
        return self.fc_out(x).astype(jnp.float32)

    def __call__(self, tokens, memory, memory_mask, train: bool = False):
        """Teacher forcing: (B, T) tokens -> (B, T, V) logits under a causal mask."""
        return self.from_embeddings(self._embed(tokens, 0, not train), memory, memory_mask, train)

    def from_embeddings(self, x, memory, memory_mask, train: bool = False):
        """The causal stack on already embedded inputs (B, T, D), positions included."""
        det = not train
        t = x.shape[1]
        causal = jnp.tril(jnp.ones((t, t), bool))[None, None]
        cross_mask = memory_mask[:, None, None, :]
        for layer in self.layers:
            ck, cv = layer.cross_kv(memory)
            x, _ = layer(x, causal, ck, cv, cross_mask, deterministic=det)
        return self._logits(x)

    def init_cache(self, memory, memory_mask, max_len: int):
        b = memory.shape[0]
        heads = self.cfg.dec_heads
        shape = (b, max_len, heads, self.cfg.d_model // heads)
        dtype = jnp.dtype(self.cfg.dtype)
        layers = []
        for layer in self.layers:
            ck, cv = layer.cross_kv(memory)
            layers.append({"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
                           "ck": ck, "cv": cv})
        return {"index": jnp.zeros((), jnp.int32), "memory_mask": memory_mask,
                "layers": tuple(layers)}

    def decode_step(self, tokens, cache):
        """(B, T) tokens at positions index..index+T-1 -> (B, T, V) logits, updated cache."""
        index = cache["index"]
        t = tokens.shape[1]
        max_len = cache["layers"][0]["k"].shape[1]
        q_pos = index + jnp.arange(t)
        self_mask = (jnp.arange(max_len)[None, :] <= q_pos[:, None])[None, None]
        cross_mask = cache["memory_mask"][:, None, None, :]
        x = self._embed(tokens, index, True)
        new_layers = []
        for layer, lc in zip(self.layers, cache["layers"]):
            x, lc = layer(x, self_mask, lc["ck"], lc["cv"], cross_mask, cache=lc, index=index)
            new_layers.append(lc)
        new_cache = {**cache, "index": index + t, "layers": tuple(new_layers)}
        return self._logits(x), new_cache
