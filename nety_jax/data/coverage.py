"""How much of a text a tokenizer knows: the share of its tokens that are ``<unk>``.

A run resumed (or a model fine-tuned) on text its saved tokenizer was not built on
can read as nothing but ``<unk>`` (a word vocabulary meeting new words): training then
learns nothing of the text while the loss falls. Checked for any data against any
saved tokenizer, on a sample of the texts.
"""
from __future__ import annotations

from typing import Callable, Sequence

from nety_jax.config.sections import UNK_ID
from nety_jax.errors import DataError

MAX_UNKNOWN = 0.5  # above: refused, the text is mostly unknown to the tokenizer
WARN_UNKNOWN = 0.2  # above: trained on, with a warning
SAMPLE = 2000  # texts read to measure it (evenly spread)


def unknown_share(tokenizer, texts: Sequence[str]) -> tuple[float, int]:
    """(share of <unk> among the tokens, tokens counted) over a sample of ``texts``. Tokens that
    are only a word boundary are not counted: SentencePiece writes a known "▁" before each
    unknown word, so a text of nothing but unknown words read as 50% unknown and passed."""
    step = max(1, len(texts) // SAMPLE)
    unknown = total = 0
    blank: dict[int, bool] = {}
    for text in texts[::step]:
        for i in tokenizer.encode(text):
            if i not in blank:
                blank[i] = i != UNK_ID and not tokenizer.decode([i]).strip()
            if not blank[i]:
                total += 1
                unknown += i == UNK_ID
    return (unknown / total if total else 0.0), total


def check_coverage(tokenizer, texts: Sequence[str], where: str, log: Callable[[str], None],
                   whose: str = "the saved tokenizer this run must use",
                   fix: str = "train a new run on it (a new --workdir builds its tokenizer)") -> float:
    """Refuses ``texts`` (from ``where``) that are mostly unknown to ``tokenizer``; warns when a
    large share is."""
    share, total = unknown_share(tokenizer, texts)
    if share > MAX_UNKNOWN:
        raise DataError(f"{where}: {share:.0%} of its {total:,} tokens are unknown (<unk>) to {whose} "
                        f"({tokenizer.vocab_size} ids); training would learn nothing of this text: {fix}")
    if share > WARN_UNKNOWN:
        log(f"warning: {where}: {share:.0%} of its tokens are unknown (<unk>) to {whose}")
    return share
