"""The hybrid seq2seq network: encode once, decode many times (teacher forcing or cached)."""
from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from nety_jax.config.sections import PAD_ID
from nety_jax.layers import CopyHead, DecoderSpec, TransformerDecoder
from nety_jax.layers.partitioning import embedding
from nety_jax.layers.remat import Remat
from nety_jax.models.hybrid.config import HybridConfig
from nety_jax.models.hybrid.encoder import Encoder


def decoder_spec(cfg: HybridConfig) -> DecoderSpec:
    """NETY's decoder: PyTorch's TransformerDecoderLayer, ReLU, sinusoidal positions, embeddings
    scaled by sqrt(d_model), cross-attention to the encoder memory."""
    return DecoderSpec(vocab_size=cfg.vocab_size, d_model=cfg.d_model, heads=cfg.dec_heads,
                       layers=cfg.dec_layers, d_ff=cfg.d_ff, max_len=cfg.max_len, dropout=cfg.dropout,
                       attention_dropout=cfg.attention_dropout, activation="relu", norm=cfg.norm,
                       positions="sinusoidal", embed_scale=True, qkv_bias=True, cross_attention=True,
                       tie_output=cfg.tie_output, output_bias=cfg.output_bias, dtype=cfg.dtype,
                       quant=cfg.quant)


class HybridSeq2Seq(nn.Module):
    """NETY's HybridRNNTransformer: (Bi)RNN encoder memory -> Transformer decoder.

    Parameters: ``enc_embed`` (NETY's ``rnn_embedding``), ``encoder`` (``rnn_encoder``),
    ``decoder`` (``transformer_decoder``). BatchNorm statistics live in ``batch_stats``.
    """

    cfg: HybridConfig
    axis_name: Optional[str] = None
    remat: Remat = Remat()  # training's rematerialisation (layers/remat.py)

    def setup(self):
        self.enc_embed = embedding(self.cfg.vocab_size, self.cfg.d_model)
        self.encoder = Encoder(self.cfg, self.axis_name, self.remat)
        self.decoder = TransformerDecoder(dataclasses.replace(decoder_spec(self.cfg), remat=self.remat.policy))
        if self.cfg.copy:
            self.pointer = CopyHead(self.cfg.d_model, self.cfg.vocab_size, jnp.dtype(self.cfg.dtype), self.cfg.quant)

    def encode(self, src, src_len: Optional[jax.Array] = None, train: bool = False):
        """(B, S) ids -> memory (B, M, D) and its mask (B, M)."""
        if src_len is None:
            src_len = jnp.sum(src != PAD_ID, axis=1)
        emb = self.enc_embed(src).astype(jnp.dtype(self.cfg.dtype))
        return self.encoder(emb, src_len, train)

    def _copy_source(self, memory, memory_mask, src) -> dict:
        """The copy head's view of the memory: which source token each position carries (the
        pooled vector, put first in sequence memory, carries none)."""
        if src is None:
            raise ValueError("model.copy=true: the decoder needs the source ids (src=...)")
        ids = jnp.pad(src, ((0, 0), (memory.shape[1] - src.shape[1], 0)))
        return self.pointer.prepare(memory, memory_mask, ids)

    def decode(self, tgt_in, memory, memory_mask, train: bool = False, src=None):
        """Teacher forcing: (B, T) target ids -> (B, T, V) float32 logits (log-probabilities
        with ``model.copy``, whose pointer reads the source ids ``src``)."""
        if not self.cfg.copy:
            return self.decoder(tgt_in, memory, memory_mask, train)
        h = self.decoder.features(tgt_in, memory, memory_mask, train)
        pre = self._copy_source(memory, memory_mask, src)
        return self.pointer(self.decoder.logits(h), self.decoder.head_input(h), pre)

    def init_cache(self, memory, memory_mask, max_len: int, src=None):
        cache = self.decoder.init_cache(memory.shape[0], max_len, memory, memory_mask)
        if not self.cfg.copy:
            return cache
        return {"decoder": cache, "copy": self._copy_source(memory, memory_mask, src)}

    def encoded(self, cache) -> dict:
        """What a cache keeps of the encoder pass: each layer's cross-attention entry (and the
        copy head's view of the memory)."""
        dec = cache["decoder"] if self.cfg.copy else cache
        kept = {"cross": tuple(entry["cross"] for entry in dec["layers"])}
        return kept | ({"copy": cache["copy"]} if self.cfg.copy else {})

    def cache_from_encoded(self, encoded: dict, max_len: int):
        """``init_cache`` from what ``encoded`` kept, without the encoder."""
        batch = jax.tree_util.tree_leaves(encoded["cross"])[0].shape[0]
        cache = self.decoder.init_cache(batch, max_len, cross=encoded["cross"])
        return {"decoder": cache, "copy": encoded["copy"]} if self.cfg.copy else cache

    def decode_step(self, tokens, cache):
        """(B, T) tokens at each row's next positions -> ((B, T, V) logits, cache)."""
        if not self.cfg.copy:
            return self.decoder.decode(tokens, cache)
        h, dec = self.decoder.decode_features(tokens, cache["decoder"])
        logits = self.pointer(self.decoder.logits(h), self.decoder.head_input(h), cache["copy"])
        return logits, {"decoder": dec, "copy": cache["copy"]}

    def __call__(self, src, src_len, tgt_in, train: bool = False):
        memory, mask = self.encode(src, src_len, train)
        return self.decode(tgt_in, memory, mask, train, src)
