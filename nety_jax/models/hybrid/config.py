"""The hybrid's model section: NETY's (Bi)RNN encoder feeding a Transformer decoder."""
from __future__ import annotations

import dataclasses

from nety_jax.config import fields as F
from nety_jax.config.sections import ModelConfig
from nety_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class HybridConfig(ModelConfig):
    arch: str = "hybrid"
    d_model: int = 512
    # encoder
    enc_heads: int = 4
    enc_hidden: int = 256  # per direction
    enc_layers: int = 3
    cell: str = "lstm"  # lstm | gru | rnn
    bidirectional: bool = True
    enc_attention_mask: bool = True  # NETY: False (pads are attended to)
    enc_attention_residual: bool = True  # NETY: False (attention replaces the embeddings)
    pooling: str = "last_real"  # last_real | last_padded (NETY)
    head_dims: tuple = (256, 128)
    head_norm: str = "batch"  # batch (NETY) | layer
    memory: str = "sequence"  # pooled (NETY: one vector) | sequence
    memory_prepend_pooled: bool = True  # sequence mode: put the pooled vector first
    copy: bool = False  # pointer-generator output: replies may copy source tokens (sequence memory)
    # decoder
    dec_layers: int = 6
    dec_heads: int = 8
    d_ff: int = 2048
    norm: str = "post"  # post (NETY) | pre
    output_bias: bool = True
    tie_output: bool = False
    attention_dropout: float = 0.1

    def validate(self) -> None:
        super().validate()
        s = "model"
        F.positive(s, self, "d_model", "enc_heads", "enc_hidden", "enc_layers", "dec_layers",
                   "dec_heads", "d_ff")
        for name in ("d_model", "enc_hidden", "d_ff"):
            F.at_most(s, self, name, 1 << 16, "layers that wide do not fit")
        for name in ("enc_layers", "dec_layers"):
            F.at_most(s, self, name, 256, "stacks that deep do not fit")
        for heads in ("enc_heads", "dec_heads"):
            if self.d_model % getattr(self, heads):
                raise ConfigError(f"model.d_model={self.d_model} is not divisible by "
                                  f"model.{heads}={getattr(self, heads)}")
        F.choice(s, "cell", self.cell, ("lstm", "gru", "rnn"))
        F.choice(s, "pooling", self.pooling, ("last_real", "last_padded"))
        F.choice(s, "head_norm", self.head_norm, ("batch", "layer"))
        F.choice(s, "memory", self.memory, ("pooled", "sequence"))
        F.choice(s, "norm", self.norm, ("post", "pre"))
        F.probability(s, self, "attention_dropout")
        if self.copy and self.memory != "sequence":
            raise ConfigError("model.copy=true points at source positions: it needs model.memory=sequence, "
                              f"not {self.memory!r}")
        if any(isinstance(d, bool) or not isinstance(d, int) or d <= 0 or d > 1 << 16
               for d in self.head_dims):
            raise ConfigError(f"model.head_dims={list(self.head_dims)} must be positive integers")

    def validate_with(self, cfg) -> None:
        if cfg.data.max_tgt_len + 1 > self.max_len:
            raise ConfigError(f"data.max_tgt_len={cfg.data.max_tgt_len} must be < "
                              f"model.max_len={self.max_len}")
        if cfg.decode.max_new_tokens + 1 > self.max_len:
            raise ConfigError(f"decode.max_new_tokens={cfg.decode.max_new_tokens} must be < "
                              f"model.max_len={self.max_len}")
