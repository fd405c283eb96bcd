"""The decoder-only language model's section (GPT-2 style by default)."""
from __future__ import annotations

import dataclasses

from nety_jax.config import fields as F
from nety_jax.config.sections import ModelConfig
from nety_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class GPTConfig(ModelConfig):
    arch: str = "gpt"
    vocab_size: int = 50257
    max_len: int = 1024  # context length (learned positions)
    d_model: int = 768
    heads: int = 12
    layers: int = 12
    d_ff: int = 3072
    activation: str = "gelu"  # gelu (tanh approximation, GPT-2) | gelu_exact | relu
    norm: str = "pre"  # pre | post
    positions: str = "learned"  # learned | sinusoidal
    qkv_bias: bool = False
    tie_output: bool = False
    output_bias: bool = False
    attention_dropout: float = 0.1
    norm_eps: float = 1e-5  # LayerNorm epsilon (GPT-2's layer_norm_epsilon)
    # output ids the model never predicts (logit -1e9): our special ids that an imported
    # tokenizer lacks (GPT-2 has no pad, sos or unk; see models/gpt/hf_io.py)
    blocked_ids: tuple = ()

    def validate(self) -> None:
        super().validate()
        s = "model"
        F.positive(s, self, "d_model", "heads", "layers", "d_ff")
        for name in ("d_model", "d_ff"):
            F.at_most(s, self, name, 1 << 16, "layers that wide do not fit")
        F.at_most(s, self, "layers", 256, "stacks that deep do not fit")
        if self.d_model % self.heads:
            raise ConfigError(f"model.d_model={self.d_model} is not divisible by model.heads={self.heads}")
        F.choice(s, "activation", self.activation, ("gelu", "gelu_exact", "relu"))
        F.choice(s, "norm", self.norm, ("pre", "post"))
        F.choice(s, "positions", self.positions, ("learned", "sinusoidal"))
        F.probability(s, self, "attention_dropout")
        F.positive(s, self, "norm_eps")
        if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < self.vocab_size
                   for i in self.blocked_ids):
            raise ConfigError(f"model.blocked_ids={list(self.blocked_ids)} must be ids in "
                              f"[0, model.vocab_size={self.vocab_size})")

    def validate_with(self, cfg) -> None:
        F.lm_lengths_fit(self.max_len, cfg)
