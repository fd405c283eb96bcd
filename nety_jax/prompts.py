"""Texts <-> padded id batches, shared by in-process and exported generation (no Flax here)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from nety_jax.config import EOS_ID, PAD_ID, DataConfig
from nety_jax.errors import NetyError


def bucket(n: int, multiple: int = 8) -> int:
    """Lengths are rounded up to a multiple so compiled functions are reused."""
    return ((n + multiple - 1) // multiple) * multiple


def batch_bucket(n: int) -> int:
    """Batch sizes are rounded up to a power of two."""
    return 1 << max(n - 1, 0).bit_length()


def encode_sources(tokenizer, texts: Sequence[str], cfg: DataConfig,
                   pad_batch: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Texts -> padded (B', S) ids and (B',) lengths, B' and S bucketed."""
    if not texts:
        raise NetyError("no prompt given")
    rows = []
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise NetyError(f"prompt {i + 1} is empty")
        ids = tokenizer.encode(text.strip()) + ([EOS_ID] if cfg.src_eos else [])
        rows.append(ids[: cfg.max_src_len] or [EOS_ID])
    b = batch_bucket(len(rows)) if pad_batch else len(rows)
    s = min(bucket(max(map(len, rows)), cfg.bucket_multiple), max(cfg.max_src_len, 1))
    src = np.full((b, s), PAD_ID, np.int32)
    lengths = np.ones((b,), np.int32)
    for i, ids in enumerate(rows):
        src[i, : len(ids)] = ids
        lengths[i] = len(ids)
    return src, lengths


def decode_replies(tokenizer, tokens, n: int) -> list[str]:
    tokens = np.asarray(tokens)
    return [tokenizer.decode(tokens[i].tolist()) for i in range(n)]
