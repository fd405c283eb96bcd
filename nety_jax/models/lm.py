"""What every language model shares: the batch format and the prefill cache size.

A language-model batch is ``{"tokens": (B, T), "targets": (B, T)}`` (targets are the
tokens shifted by one; 0 marks padding); packed rows (``data.packing``) add
``segments`` and ``positions`` (B, T), and a network keeps the segments apart. A prompt is a text prefix (cut from the
left when too long, see ``tasks.prompting``); the continuation is what decoding
returns.
"""
from __future__ import annotations

import numpy as np

from nety_jax.errors import NetyError
from nety_jax.models.base import Model


class LanguageModel(Model):
    def example_batch(self, batch: int = 2, length: int = 8) -> dict:
        ones = np.ones((batch, length), np.int32)
        return {"tokens": ones, "targets": ones}

    def _call_args(self, batch: dict) -> dict:
        if "segments" in batch:  # packed rows (data.packing): documents kept apart
            return {"tokens": batch["tokens"], "segments": batch["segments"], "positions": batch["positions"]}
        return {"tokens": batch["tokens"]}

    def check_room(self, prompt_len: int, max_new_tokens: int) -> int:
        """Positions a decode of ``max_new_tokens`` after a ``prompt_len`` prompt writes."""
        needed = prompt_len + max_new_tokens - 1
        if needed > self.cfg.max_len:
            raise NetyError(f"a prompt of {prompt_len} tokens plus max_new_tokens={max_new_tokens} "
                            f"needs {needed} positions; model.max_len={self.cfg.max_len}")
        return needed

    def slot_prefill(self, variables, tokens, lengths, source_len: int):
        """A cache of the whole context (``model.max_len`` positions) whatever the prompt length:
        every row keeps room for the longest reply after its prompt."""
        return self.start_decoding(variables, tokens, lengths, self.cfg.max_len - tokens.shape[1] + 1)

    def slot_prefill_from(self, variables, states, tokens, lengths, source_len: int):
        return self.start_from_states(variables, states, tokens, lengths, 1)
