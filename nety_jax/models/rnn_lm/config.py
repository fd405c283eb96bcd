"""The recurrent language model's section (next-word prediction)."""
from __future__ import annotations

import dataclasses

from nety_jax.config import fields as F
from nety_jax.config.sections import ModelConfig
from nety_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class RNNLMConfig(ModelConfig):
    arch: str = "rnn_lm"
    vocab_size: int = 10000
    max_len: int = 256  # longest prompt + continuation served at once
    d_model: int = 256  # embedding size
    hidden: int = 512
    layers: int = 2
    cell: str = "lstm"  # lstm | gru | rnn
    tie_output: bool = False  # needs hidden == d_model
    output_bias: bool = True

    def validate(self) -> None:
        super().validate()
        s = "model"
        F.positive(s, self, "d_model", "hidden", "layers")
        for name in ("d_model", "hidden"):
            F.at_most(s, self, name, 1 << 16, "layers that wide do not fit")
        F.at_most(s, self, "layers", 256, "stacks that deep do not fit")
        F.choice(s, "cell", self.cell, ("lstm", "gru", "rnn"))
        if self.tie_output and self.hidden != self.d_model:
            raise ConfigError(f"model.tie_output=true needs model.hidden={self.hidden} == "
                              f"model.d_model={self.d_model}")

    def validate_with(self, cfg) -> None:
        F.lm_lengths_fit(self.max_len, cfg)
