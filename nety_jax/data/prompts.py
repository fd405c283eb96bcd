"""Texts <-> padded id batches for any model, shared by in-process, exported and served
generation (no Flax here).

Batches are bucketed (batch size to a power of two, length to a multiple of
``data.bucket_multiple``) so compiled functions are reused; a prompt longer than
the model takes is cut (sources keep their start, LM prefixes their end) and
reported.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from nety_jax.config.sections import PAD_ID
from nety_jax.errors import NetyError


def bucket(n: int, multiple: int = 8) -> int:
    return ((n + multiple - 1) // multiple) * multiple


def batch_bucket(n: int) -> int:
    """Batch sizes are rounded up to a power of two."""
    return 1 << max(n - 1, 0).bit_length()


@dataclasses.dataclass
class PromptBatch:
    tokens: np.ndarray  # (B', S) int32, right-padded; B' >= the number of prompts
    lengths: np.ndarray  # (B',) int32
    count: int  # real prompts (the first rows)
    cut: list[int]  # indices of prompts that were cut to fit
    texts: list[str] = dataclasses.field(default_factory=list)  # the prompts as given (stripped)


def unencodable(text: str) -> str:
    """Why ``text`` cannot be tokenized ('' when it can): a lone surrogate (a JSON "\\ud800", a
    Python "\\udc80") is not a character and has no UTF-8 form for the tokenizer."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"holds a lone surrogate (U+{ord(text[e.start]):04X}) at character {e.start}, not text"
    return ""


def check_prompt(i: int, text) -> str:
    if not isinstance(text, str):
        raise NetyError(f"prompt {i + 1} must be text, got {type(text).__name__}")
    if not text.strip():
        raise NetyError(f"prompt {i + 1} is empty")
    if unencodable(text):
        raise NetyError(f"prompt {i + 1} {unencodable(text)}")
    return text.strip()


def encode_prompts(policy, tokenizer, texts: Sequence[str], data_cfg, max_new_tokens: int,
                   pad_batch: bool = True, fixed_batch: int = 0) -> PromptBatch:
    """Prompt texts -> a bucketed, right-padded id batch for ``start_decoding``.

    ``policy``: the model's ``prompts`` (``nety_jax.tasks.prompting``)."""
    if not texts:
        raise NetyError("no prompt given")
    limit = policy.limit(data_cfg, max_new_tokens)
    if limit < 1:
        raise NetyError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt "
                        f"(model.max_len={policy.model_cfg.max_len})")
    rows, cut, given = [], [], []
    for i, text in enumerate(texts):
        given.append(check_prompt(i, text))
        ids = policy.ids(tokenizer, given[-1], data_cfg)
        if not ids:
            raise NetyError(f"prompt {i + 1} has no tokens the model knows")
        if len(ids) > limit:
            ids = policy.cut(ids, limit)
            cut.append(i)
        rows.append(ids)
    b = fixed_batch or (batch_bucket(len(rows)) if pad_batch else len(rows))
    if b < len(rows):
        raise NetyError(f"this export takes batches of {b}; got {len(rows)} prompts")
    s = min(bucket(max(map(len, rows)), data_cfg.bucket_multiple), limit)
    tokens = np.full((b, s), PAD_ID, np.int32)
    lengths = np.ones((b,), np.int32)
    for i, ids in enumerate(rows):
        tokens[i, : len(ids)] = ids
        lengths[i] = len(ids)
    if b > len(rows):
        tokens[len(rows):, 0] = rows[0][0]  # filler rows: a valid one-token prompt
    return PromptBatch(tokens, lengths, len(rows), cut, given)


def repeat_rows(batch: PromptBatch, n: int) -> PromptBatch:
    """The real prompts of ``batch``, each ``n`` times in a row (an N-best list's prompts)."""
    c = batch.count
    return PromptBatch(np.repeat(batch.tokens[:c], n, axis=0), np.repeat(batch.lengths[:c], n), c * n,
                       [i * n + j for i in batch.cut for j in range(n)],
                       [t for t in batch.texts for _ in range(n)])


def decode_replies(tokenizer, tokens, n: int, prompts: PromptBatch | None = None) -> list[str]:
    """Generated ids -> texts; with ``prompts``, each text is its prompt continued (decoded as one
    sequence, so a continuation that finishes the prompt's last word joins it). The prompt is
    kept as the user wrote it (case, spacing) wherever its decoding is a prefix of the whole."""
    tokens = np.asarray(tokens)
    if prompts is None:
        return [tokenizer.decode(tokens[i].tolist()) for i in range(n)]
    return [_with_prompt(tokenizer, prompts, i, tokens[i].tolist()) for i in range(n)]


def _with_prompt(tokenizer, prompts: PromptBatch, i: int, new: list[int]) -> str:
    ids = prompts.tokens[i, : prompts.lengths[i]].tolist()
    whole, head = tokenizer.decode(ids + new), tokenizer.decode(ids)
    if i < len(prompts.texts) and i not in prompts.cut and whole.startswith(head):
        return prompts.texts[i] + whole[len(head):]
    return whole
