"""Prompt policies: how a prompt text becomes ids, and how long a prompt may be.

Kept free of JAX and Flax: exported artifacts and servers use them without the
model code. Each task picks one (``Task.prompts``). ``source``: a source the model
replies to (ends with <eos> when ``data.src_eos``; too long -> keeps its start).
``prefix``: a text the model continues (too long -> keeps its end; the cache must
hold the prompt and the continuation).
"""
from __future__ import annotations

from nety_jax.config.sections import EOS_ID


class SourcePrompts:
    kind = "source"

    def __init__(self, model_cfg):
        self.model_cfg = model_cfg

    def ids(self, tokenizer, text: str, data_cfg) -> list[int]:
        return tokenizer.encode(text) + ([EOS_ID] if data_cfg.src_eos else [])

    def limit(self, data_cfg, max_new_tokens: int) -> int:
        return data_cfg.max_src_len

    def cut(self, ids: list[int], limit: int) -> list[int]:
        return ids[:limit]

    def max_new_tokens(self) -> int:
        """The most tokens one reply can have (the decoder's positions)."""
        return self.model_cfg.max_len - 1

    def reply_room(self, width: int) -> int:
        """The most tokens a reply can have after prompts of ``width`` tokens."""
        return self.max_new_tokens()


class PrefixPrompts(SourcePrompts):
    kind = "prefix"

    def ids(self, tokenizer, text: str, data_cfg) -> list[int]:
        return tokenizer.encode(text)

    def limit(self, data_cfg, max_new_tokens: int) -> int:
        return self.model_cfg.max_len - max_new_tokens + 1

    def cut(self, ids: list[int], limit: int) -> list[int]:
        return ids[-limit:] if limit > 0 else []

    def reply_room(self, width: int) -> int:
        return self.model_cfg.max_len - width + 1  # the prompt and the reply share the context

