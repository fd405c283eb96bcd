"""The hybrid seq2seq network: encode once, decode many times (teacher forcing or cached)."""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from nety_jax.config.sections import PAD_ID
from nety_jax.layers import DecoderSpec, TransformerDecoder
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

    def setup(self):
        self.enc_embed = nn.Embed(self.cfg.vocab_size, self.cfg.d_model)
        self.encoder = Encoder(self.cfg, self.axis_name)
        self.decoder = TransformerDecoder(decoder_spec(self.cfg))

    def encode(self, src, src_len: Optional[jax.Array] = None, train: bool = False):
        """(B, S) ids -> memory (B, M, D) and its mask (B, M)."""
        if src_len is None:
            src_len = jnp.sum(src != PAD_ID, axis=1)
        emb = self.enc_embed(src).astype(jnp.dtype(self.cfg.dtype))
        return self.encoder(emb, src_len, train)

    def decode(self, tgt_in, memory, memory_mask, train: bool = False):
        """Teacher forcing: (B, T) target ids -> (B, T, V) float32 logits."""
        return self.decoder(tgt_in, memory, memory_mask, train)

    def init_cache(self, memory, memory_mask, max_len: int):
        return self.decoder.init_cache(memory.shape[0], max_len, memory, memory_mask)

    def decode_step(self, tokens, cache):
        """(B, T) tokens at each row's next positions -> ((B, T, V) logits, cache)."""
        return self.decoder.decode(tokens, cache)

    def __call__(self, src, src_len, tgt_in, train: bool = False):
        memory, mask = self.encode(src, src_len, train)
        return self.decode(tgt_in, memory, mask, train)
