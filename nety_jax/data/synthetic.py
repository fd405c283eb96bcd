"""Synthetic sequence tasks with exact answers: copy, reverse and sort of random symbol strings.

They measure whether a seq2seq model learns an algorithm rather than recalls its data:
the training strings are drawn fresh from a seeded generator, the test strings never occur
in training, and test lengths can go beyond the training lengths (length generalisation).
Symbols are short words (``a`` ... ``t``) for a whitespace word tokenizer (one id each).
Used by ``scripts/bench_quality.py`` and the fast learning test.
"""
from __future__ import annotations

import string
from typing import Iterable, Sequence

import numpy as np

from nety_jax.errors import ConfigError

TASKS = ("copy", "reverse", "sort")
SYMBOLS = tuple(string.ascii_lowercase[:20])


def answer(task: str, symbols: Sequence[str]) -> list[str]:
    if task == "copy":
        return list(symbols)
    if task == "reverse":
        return list(symbols)[::-1]
    if task == "sort":
        return sorted(symbols, key=SYMBOLS.index)
    raise ConfigError(f"unknown synthetic task {task!r} (one of {', '.join(TASKS)})")


def make_pairs(task: str, n: int, lengths: tuple[int, int], seed: int,
               exclude: Iterable[str] = (), num_symbols: int = len(SYMBOLS)) -> list[tuple[str, str]]:
    """``n`` distinct (source, target) pairs, lengths uniform in ``lengths`` (inclusive),
    none of whose source is in ``exclude``."""
    lo, hi = lengths
    if not 1 <= lo <= hi:
        raise ConfigError(f"lengths {lengths}: need 1 <= low <= high")
    if not 2 <= num_symbols <= len(SYMBOLS):
        raise ConfigError(f"num_symbols={num_symbols} must be in [2, {len(SYMBOLS)}]")
    answer(task, [])  # validates the task name
    rng = np.random.default_rng(seed)
    seen, pairs = set(exclude), []
    tries = 0
    while len(pairs) < n:
        tries += 1
        if tries > 20 * n + 1000:
            raise ConfigError(f"cannot draw {n} distinct {task} strings of lengths {lengths}")
        seq = [SYMBOLS[i] for i in rng.integers(0, num_symbols, int(rng.integers(lo, hi + 1)))]
        src = " ".join(seq)
        if src in seen:
            continue
        seen.add(src)
        pairs.append((src, " ".join(answer(task, seq))))
    return pairs


def split(task: str, n_train: int, n_test: int, train_lengths=(4, 40), longer=(41, 48),
          seed: int = 0, num_symbols: int = len(SYMBOLS)) -> dict[str, list[tuple[str, str]]]:
    """{"train", "test" (training lengths, unseen strings), "longer" (unseen lengths)}."""
    train = make_pairs(task, n_train, train_lengths, seed, num_symbols=num_symbols)
    sources = [s for s, _ in train]
    test = make_pairs(task, n_test, train_lengths, seed + 1_000_003, exclude=sources, num_symbols=num_symbols)
    out = {"train": train, "test": test}
    if longer:
        out["longer"] = make_pairs(task, n_test, longer, seed + 2_000_003, num_symbols=num_symbols)
    return out


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    if not len(references):
        return float("nan")
    return float(np.mean([p.split() == r.split() for p, r in zip(predictions, references)]))


def token_accuracy(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Position-wise agreement over the reference's tokens (a missing token counts wrong)."""
    right = total = 0
    for p, r in zip(predictions, references):
        p, r = p.split(), r.split()
        right += sum(a == b for a, b in zip(p, r))
        total += len(r)
    return right / max(total, 1)
