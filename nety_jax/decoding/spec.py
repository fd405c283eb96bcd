"""The static part of decoding: what shapes the compiled program (no JAX here)."""
from __future__ import annotations

import dataclasses

from nety_jax.config.sections import DecodeConfig


DERIVED = ("greedy_only",)  # set from a call's rows, not a decode setting


@dataclasses.dataclass(frozen=True)
class LoopSpec:
    """The static part of decoding (it shapes the compiled program)."""

    max_new_tokens: int = 50
    top_k_max: int = 64
    beam_size: int = 1
    length_penalty: float = 0.6
    min_new_tokens: int = 0
    no_repeat_ngram: int = 0
    ignore_eos: bool = False
    speculate: str = "none"  # none | ngram (decoding.speculative)
    draft_tokens: int = 4
    # every row of the call is greedy (temperature 0 or top_k 1): the program holds the argmax and
    # no sampler (set by a caller that knows its rows, ``Pretrained``; a server's rows vary)
    greedy_only: bool = False

    @property
    def speculative(self) -> bool:
        """Whether the sampling loop speculates (beam search and no_repeat_ngram never do)."""
        return self.speculate != "none" and self.beam_size == 1 and self.no_repeat_ngram == 0

    @classmethod
    def from_config(cls, dcfg: DecodeConfig) -> "LoopSpec":
        """The loop's static settings as a run's ``decode`` section sets them."""
        return cls(**{f.name: getattr(dcfg, f.name) for f in dataclasses.fields(cls) if f.name not in DERIVED})
