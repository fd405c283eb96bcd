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
from importlib import resources
from typing import Optional

import numpy as np

from nety_jax.config.sections import EOS_ID, PAD_ID, SOS_ID, DataConfig
from nety_jax.data.readers import read_lines
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


def read_pairs(path: str, cfg: DataConfig, skip_bad: bool = False) -> ReadReport:
    """Reads (input, target) pairs; a bad line raises (or, with skip_bad, is counted)."""
    fmt = pairs_format(path, cfg)
    keys = (cfg.input_key, cfg.target_key)
    report = ReadReport(pairs=[])
    for lineno, line, error in read_lines(path):
        try:
            if error:
                raise DataError(error)
            if line.strip():
                report.pairs.append(_parse_line(path, lineno, line, fmt, keys))
        except DataError as e:
            if not skip_bad:
                raise
            report.skipped += 1
            report.first_error = report.first_error or str(e)
    if not report.pairs:
        detail = f" ({report.skipped} bad lines skipped; first: {report.first_error})" \
            if report.skipped else ""
        raise DataError(f"{path}: no (input, target) pairs found{detail}")
    return report


def split_pairs(pairs, val_fraction: float, seed: int):
    """Deterministic held-out split (at least one validation pair when asked for)."""
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_val = int(round(len(pairs) * val_fraction))
    if val_fraction > 0:
        n_val = min(max(n_val, 1), len(pairs) - 1)
    val = [pairs[i] for i in order[:n_val]]
    train = [pairs[i] for i in order[n_val:]]
    return train, val


def _round_up(n: int, multiple: int) -> int:
    return ((n + multiple - 1) // multiple) * multiple


@dataclasses.dataclass
class Encoded:
    """Token ids of a split: sources without <sos>; targets as <sos> ... <eos>."""

    src: list[np.ndarray]
    tgt: list[np.ndarray]
    cfg: DataConfig
    truncated: int = 0

    def __len__(self):
        return len(self.src)

    def length(self, i: int) -> int:
        return len(self.src[i]) + len(self.tgt[i])

    def collate(self, idx) -> dict:
        """Pads a batch to lengths rounded up to ``bucket_multiple`` (few distinct shapes)."""
        cfg = self.cfg
        srcs = [self.src[i] for i in idx]
        tgts = [self.tgt[i] for i in idx]
        s_len = min(_round_up(max(len(s) for s in srcs), cfg.bucket_multiple), cfg.max_src_len)
        t_len = min(_round_up(max(len(t) - 1 for t in tgts), cfg.bucket_multiple), cfg.max_tgt_len)
        b = len(idx)
        src = np.full((b, s_len), PAD_ID, np.int32)
        tgt = np.full((b, t_len + 1), PAD_ID, np.int32)
        for row, (s, t) in enumerate(zip(srcs, tgts)):
            src[row, : len(s)] = s
            tgt[row, : len(t)] = t
        return {"src": src, "src_len": np.asarray([len(s) for s in srcs], np.int32),
                "tgt_in": tgt[:, :-1], "targets": tgt[:, 1:]}

    def reference(self, i: int) -> list[int]:
        """The target ids a reply is scored against."""
        return self.tgt[i][1:].tolist()


def encode_pairs(pairs, tokenizer, cfg: DataConfig) -> Encoded:
    src, tgt, truncated = [], [], 0
    for inp, out in pairs:
        s = tokenizer.encode(inp) + ([EOS_ID] if cfg.src_eos else [])
        t = [SOS_ID] + tokenizer.encode(out) + [EOS_ID]
        if len(s) > cfg.max_src_len or len(t) > cfg.max_tgt_len + 1:
            truncated += 1
        src.append(np.asarray(s[: cfg.max_src_len] or [EOS_ID], np.int32))
        tgt.append(np.asarray(t[: cfg.max_tgt_len + 1], np.int32))
    return Encoded(src, tgt, cfg, truncated)
