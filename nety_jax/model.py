"""The hybrid seq2seq model: encode once, decode many times (teacher forcing or cached)."""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from nety_jax.config import PAD_ID, ModelConfig
from nety_jax.decoder import Decoder
from nety_jax.encoder import Encoder


class HybridSeq2Seq(nn.Module):
    """NETY's HybridRNNTransformer: (Bi)RNN encoder memory -> Transformer decoder.

    Parameters: ``enc_embed`` (NETY's ``rnn_embedding``), ``encoder`` (``rnn_encoder``),
    ``decoder`` (``transformer_decoder``). BatchNorm statistics live in ``batch_stats``.
    """

    cfg: ModelConfig

    def setup(self):
        self.enc_embed = nn.Embed(self.cfg.vocab_size, self.cfg.d_model)
        self.encoder = Encoder(self.cfg)
        self.decoder = Decoder(self.cfg)

    def encode(self, src, src_lengths: Optional[jax.Array] = None, train: bool = False):
        """(B, S) ids -> memory (B, M, D) and its mask (B, M)."""
        if src_lengths is None:
            src_lengths = jnp.sum(src != PAD_ID, axis=1)
        emb = self.enc_embed(src).astype(jnp.dtype(self.cfg.dtype))
        return self.encoder(emb, src_lengths, train)

    def decode(self, tgt, memory, memory_mask, train: bool = False):
        """Teacher forcing: (B, T) target ids -> (B, T, V) float32 logits."""
        return self.decoder(tgt, memory, memory_mask, train)

    def init_cache(self, memory, memory_mask, max_len: int):
        return self.decoder.init_cache(memory, memory_mask, max_len)

    def decode_step(self, tokens, cache):
        return self.decoder.decode_step(tokens, cache)

    def __call__(self, src, src_lengths, tgt, train: bool = False):
        memory, mask = self.encode(src, src_lengths, train)
        return self.decode(tgt, memory, mask, train)


def init_variables(cfg: ModelConfig, rng: jax.Array, src_len: int = 8, tgt_len: int = 8) -> dict:
    """Fresh ``{'params': ..., 'batch_stats': ...}`` for a config (eval-mode init)."""
    model = HybridSeq2Seq(cfg)
    src = jnp.ones((2, src_len), jnp.int32)
    tgt = jnp.ones((2, tgt_len), jnp.int32)
    lengths = jnp.full((2,), src_len, jnp.int32)
    init = jax.jit(lambda r: model.init({"params": r}, src, lengths, tgt, train=False))
    return dict(init(rng))


def abstract_variables(cfg: ModelConfig) -> dict:
    """Shapes and dtypes of the variables, without computing them."""
    model = HybridSeq2Seq(cfg)
    src = jax.ShapeDtypeStruct((2, 8), jnp.int32)
    lengths = jax.ShapeDtypeStruct((2,), jnp.int32)
    return dict(jax.eval_shape(lambda r, s, l: model.init({"params": r}, s, l, s, train=False),
                               jax.random.PRNGKey(0), src, lengths))


def count_params(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def parameter_table(cfg: ModelConfig) -> list[tuple[str, int]]:
    """Rows (module, parameter count) in NETY's grouping, then the total."""
    params = abstract_variables(cfg)["params"]
    dec = params["decoder"]
    rows = [("encoder embedding (rnn_embedding)", count_params(params["enc_embed"]))]
    enc = params["encoder"]
    rows.append(("encoder body (rnn_encoder)", count_params(enc)))
    for name in sorted(enc):
        rows.append((f"  encoder.{name}", count_params(enc[name])))
    rows.append(("decoder (transformer_decoder)", count_params(dec)))
    for name in sorted(dec, key=lambda n: (n.startswith("layers_"), n)):
        rows.append((f"  decoder.{name}", count_params(dec[name])))
    rows.append(("total", count_params(params)))
    return rows
