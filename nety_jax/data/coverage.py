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
    """(share of <unk> among the tokens, tokens counted) over a sample of ``texts``."""
    step = max(1, len(texts) // SAMPLE)
    unknown = total = 0
    for text in texts[::step]:
        ids = tokenizer.encode(text)
        total += len(ids)
        unknown += sum(1 for i in ids if i == UNK_ID)
    return (unknown / total if total else 0.0), total


def check_coverage(tokenizer, texts: Sequence[str], where: str, log: Callable[[str], None]) -> float:
    """Refuses ``texts`` (from ``where``) that are mostly unknown to ``tokenizer``; warns when a
    large share is."""
    share, total = unknown_share(tokenizer, texts)
    if share > MAX_UNKNOWN:
        raise DataError(f"{where}: {share:.0%} of its {total:,} tokens are unknown (<unk>) to the saved "
                        f"tokenizer this run must use ({tokenizer.vocab_size} ids); training would learn "
                        "nothing of this text: train a new run on it (a new --workdir builds its tokenizer)")
    if share > WARN_UNKNOWN:
        log(f"warning: {where}: {share:.0%} of its tokens are unknown (<unk>) to the saved tokenizer this "
            "run must use")
    return share
