"""Pairs for seq2seq models: reading and validating them, the split, and encoding.

Lines are JSONL (``{"input": ..., "target": ...}``, NETY's format) or TSV; a bad
line raises a ``DataError`` naming ``file:line`` (or, with ``skip_bad``, is
counted). Encoded pairs are a dataset the batcher draws from: sources end with
<eos>, targets are ``<sos> ... <eos>``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import zlib
from importlib import resources
from typing import Callable, Iterator, Optional

import numpy as np

from nety_jax.config.sections import EOS_ID, PAD_ID, SOS_ID, DataConfig
from nety_jax.data.readers import Skips, check_file, read_lines
from nety_jax.errors import DataError

DEFAULT_CORPUS = "dialogues_fr.jsonl"
FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".tsv": "tsv"}


def default_corpus_path() -> str:
    return str(resources.files("nety_jax") / "resources" / DEFAULT_CORPUS)


@dataclasses.dataclass
class ReadReport:
    pairs: list[tuple[str, str]]
    skipped: int = 0
    first_error: Optional[str] = None


def _check_pair(path, lineno, inp, tgt, keys) -> tuple[str, str]:
    for key, value in zip(keys, (inp, tgt)):
        if not isinstance(value, str):
            raise DataError(f"{path}:{lineno}: {key!r} must be a string, got {type(value).__name__}")
        if not value.strip():
            raise DataError(f"{path}:{lineno}: {key!r} is empty")
    return inp.strip(), tgt.strip()


def _given_twice(line: str, keys) -> Optional[str]:
    """The first of ``keys`` the line's object names twice, or None. ``json.loads`` keeps the last
    value silently; a line can only name a key twice if its text holds the key twice (or a
    ``\\u`` escape spells it), so other lines are not parsed again."""
    if "\\u" not in line and all(line.count(k) < 2 for k in keys):
        return None
    names = [name for name, _ in json.loads(line, object_pairs_hook=lambda pairs: pairs)]
    return next((k for k in keys if names.count(k) > 1), None)


def _parse_line(path, lineno, line, fmt, keys):
    if fmt == "jsonl":
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            msg = e.msg if isinstance(e, json.JSONDecodeError) else "nested too deeply"
            raise DataError(f"{path}:{lineno}: invalid JSON ({msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object with keys "
                            f"{keys[0]!r} and {keys[1]!r}")
        missing = [k for k in keys if k not in record]
        if missing:
            found = ", ".join(map(repr, list(record)[:5])) or "none"
            raise DataError(f"{path}:{lineno}: missing key {missing[0]!r} (found {found})")
        twice = _given_twice(line, keys)
        if twice is not None:
            raise DataError(f"{path}:{lineno}: key {twice!r} is given twice (a JSON reader keeps only "
                            "the last, silently)")
        return _check_pair(path, lineno, record[keys[0]], record[keys[1]], keys)
    fields = line.split("\t")
    if len(fields) != 2:
        raise DataError(f"{path}:{lineno}: expected 2 tab-separated fields, found {len(fields)}")
    return _check_pair(path, lineno, fields[0], fields[1], ("column 1", "column 2"))


def pairs_format(path: str, cfg: DataConfig) -> str:
    if cfg.format in ("jsonl", "tsv"):
        return cfg.format
    if cfg.format == "text":
        raise DataError(f"{path}: data.format=text is for language models; pairs are jsonl or tsv")
    name = path[:-3] if path.lower().endswith(".gz") else path
    ext = os.path.splitext(name)[1].lower()
    if ext not in FORMATS:
        raise DataError(f"{path}: cannot tell the format from {ext or 'no extension'!r}; "
                        "use .jsonl or .tsv (optionally .gz), or set data.format")
    return FORMATS[ext]


def iter_pairs(path: str, cfg: DataConfig, skip_bad: bool, skips: Skips) -> Iterator[tuple[str, str]]:
    """(input, target) pairs in file order, read as they are consumed; a bad line raises (or,
    with ``skip_bad``, is counted in ``skips``)."""
    check_file(path)  # a missing file or a directory is named as such, before its format
    fmt = pairs_format(path, cfg)
    keys = (cfg.input_key, cfg.target_key)
    for lineno, line, error in read_lines(path):
        try:
            if error:
                raise DataError(error)
            if line.strip():
                pair = _parse_line(path, lineno, line, fmt, keys)
            else:
                continue
        except DataError as e:
            if not skip_bad:
                raise
            skips.add(str(e))
            continue
        yield pair


def no_pairs(path: str, skips: Skips) -> DataError:
    detail = f" ({skips.skipped} bad lines skipped; first: {skips.first_error})" if skips.skipped else ""
    return DataError(f"{path}: no (input, target) pairs found{detail}")


def read_pairs(path: str, cfg: DataConfig, skip_bad: bool = False) -> ReadReport:
    """Reads (input, target) pairs; a bad line raises (or, with skip_bad, is counted)."""
    skips = Skips()
    pairs = list(iter_pairs(path, cfg, skip_bad, skips))
    if not pairs:
        raise no_pairs(path, skips)
    return ReadReport(pairs, skips.skipped, skips.first_error)


def split_order(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, int]:
    """(a permutation of ``range(n)``, how many of its first entries are held out)."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    if val_fraction > 0:
        n_val = min(max(n_val, 1), n - 1)
    return order, n_val


def split_pairs(pairs, val_fraction: float, seed: int):
    """Deterministic held-out split (at least one validation pair when asked for)."""
    order, n_val = split_order(len(pairs), val_fraction, seed)
    val = [pairs[i] for i in order[:n_val]]
    train = [pairs[i] for i in order[n_val:]]
    return train, val


def _round_up(n: int, multiple: int) -> int:
    return ((n + multiple - 1) // multiple) * multiple


@dataclasses.dataclass
class Encoded:
    """Token ids of a split: sources without <sos>; targets as <sos> ... <eos>.

    With ``sampler`` (training pairs under ``data.subword_alpha``), every batch re-segments
    its pairs by sampling: ``sampler(text, seed)`` returns the ids of one sampled segmentation,
    seeded by the batch's indices: a batch is a pure function of its position, so a resumed
    run draws the same pairs in the same order and the same segmentations, bit for bit (our own
    samplers, ``bpe_dropout`` and ``unigram_sampling``). Bucketing uses the fixed segmentation; a
    sampled one too long for the limits falls back to it (nothing is cut that the fixed encoding keeps)."""

    src: list[np.ndarray]
    tgt: list[np.ndarray]
    cfg: DataConfig
    truncated: int = 0
    pairs: Optional[list] = None
    sampler: Optional[Callable[[str, int], list[int]]] = None

    def __len__(self):
        return len(self.src)

    def length(self, i: int) -> int:
        return len(self.src[i]) + len(self.tgt[i])

    def collate(self, idx) -> dict:
        """Pads a batch to lengths rounded up to ``bucket_multiple`` (few distinct shapes)."""
        if self.sampler is not None:
            return self._pad(*self._sampled(idx))
        return self._pad([self.src[i] for i in idx], [self.tgt[i] for i in idx])

    def _sampled(self, idx) -> tuple[list, list]:
        cfg, seed = self.cfg, zlib.crc32(np.asarray(idx, np.int64).tobytes())
        srcs, tgts = [], []
        for k, i in enumerate(idx):
            inp, out = self.pairs[i]
            s, t = _framed(self.sampler(inp, seed + 2 * k), self.sampler(out, seed + 2 * k + 1), cfg)
            fits = len(s) <= cfg.max_src_len and len(t) <= cfg.max_tgt_len + 1
            srcs.append(np.asarray(s, np.int32) if fits else self.src[i])
            tgts.append(np.asarray(t, np.int32) if fits else self.tgt[i])
        return srcs, tgts

    def _pad(self, srcs: list, tgts: list) -> dict:
        return pad_pairs(srcs, tgts, self.cfg)

    def reference(self, i: int) -> list[int]:
        """The target ids a reply is scored against."""
        return self.tgt[i][1:].tolist()


def padded_widths(longest: tuple[int, int], cfg: DataConfig) -> tuple[int, int]:
    """(source, target) widths of a batch whose longest framed source / target have ``longest``
    ids: rounded up to ``bucket_multiple`` (the target without its last id, which is no input)."""
    s_max, t_max = longest
    return (min(_round_up(s_max, cfg.bucket_multiple), cfg.max_src_len),
            min(_round_up(t_max - 1, cfg.bucket_multiple), cfg.max_tgt_len))


def pad_pairs(srcs: list, tgts: list, cfg: DataConfig, longest: Optional[tuple[int, int]] = None) -> dict:
    """A batch of framed pairs padded to lengths rounded up to ``bucket_multiple``. ``longest``
    (source, target ids) sets the padded shape when the rows are one process's part of a batch."""
    s_len, t_len = padded_widths(longest or (max(len(s) for s in srcs), max(len(t) for t in tgts)), cfg)
    src = np.full((len(srcs), s_len), PAD_ID, np.int32)
    tgt = np.full((len(tgts), t_len + 1), PAD_ID, np.int32)
    for row, (s, t) in enumerate(zip(srcs, tgts)):
        src[row, : len(s)] = s
        tgt[row, : len(t)] = t
    return {"src": src, "src_len": np.asarray([len(s) for s in srcs], np.int32),
            "tgt_in": tgt[:, :-1], "targets": tgt[:, 1:]}


def _framed(src: list[int], tgt: list[int], cfg: DataConfig) -> tuple[list[int], list[int]]:
    """A pair's ids as the model reads them: source (+ <eos>), <sos> target <eos>."""
    return src + ([EOS_ID] if cfg.src_eos else []), [SOS_ID] + tgt + [EOS_ID]


def encode_pairs(pairs, tokenizer, cfg: DataConfig, training: bool = False) -> Encoded:
    """``training``: the split is trained on, so ``data.subword_alpha`` > 0 samples its
    segmentations batch by batch (validation and scoring always use the fixed one)."""
    src, tgt, truncated = [], [], 0
    for inp, out in pairs:
        s, t = _framed(tokenizer.encode(inp), tokenizer.encode(out), cfg)
        if len(s) > cfg.max_src_len or len(t) > cfg.max_tgt_len + 1:
            truncated += 1
        src.append(np.asarray(s[: cfg.max_src_len] or [EOS_ID], np.int32))
        tgt.append(np.asarray(t[: cfg.max_tgt_len + 1], np.int32))
    if training and cfg.subword_alpha > 0:
        alpha = cfg.subword_alpha
        return Encoded(src, tgt, cfg, truncated, list(pairs),
                       lambda text, seed: tokenizer.sample(text, alpha, seed))
    return Encoded(src, tgt, cfg, truncated)
