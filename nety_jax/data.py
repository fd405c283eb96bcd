"""Reading pairs, validating them, and a deterministic, resumable, length-bucketed batcher.

The batch for a given step is a pure function of (seed, epoch, index): the
checkpoint stores ``{"epoch", "index"}`` and resuming continues exactly.
"""
from __future__ import annotations

import dataclasses
import json
import os
from importlib import resources
from typing import Iterator, Optional

import numpy as np

from nety_jax.config import EOS_ID, PAD_ID, SOS_ID, DataConfig
from nety_jax.errors import DataError

DEFAULT_CORPUS = "dialogues_fr.jsonl"


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
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object with keys "
                            f"{keys[0]!r} and {keys[1]!r}")
        missing = [k for k in keys if k not in record]
        if missing:
            found = ", ".join(map(repr, record)) or "none"
            raise DataError(f"{path}:{lineno}: missing key {missing[0]!r} (found {found})")
        return _check_pair(path, lineno, record[keys[0]], record[keys[1]], keys)
    fields = line.rstrip("\r\n").split("\t")
    if len(fields) != 2:
        raise DataError(f"{path}:{lineno}: expected 2 tab-separated fields, found {len(fields)}")
    return _check_pair(path, lineno, fields[0], fields[1], ("column 1", "column 2"))


def read_pairs(path: str, cfg: DataConfig, skip_bad: bool = False) -> ReadReport:
    """Reads (input, target) pairs; a bad line raises (or, with skip_bad, is counted)."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: data file not found")
    fmt = cfg.format
    if fmt == "auto":
        ext = os.path.splitext(path)[1].lower()
        fmt = {".jsonl": "jsonl", ".json": "jsonl", ".tsv": "tsv"}.get(ext)
        if fmt is None:
            raise DataError(f"{path}: cannot tell the format from {ext or 'no extension'!r}; "
                            "use .jsonl or .tsv, or set data.format")
    keys = (cfg.input_key, cfg.target_key)
    report = ReadReport(pairs=[])
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{path}:{lineno}: invalid UTF-8 at byte {e.start}") from None
                if not line.strip():
                    continue
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


@dataclasses.dataclass
class Encoded:
    """Token ids of a split: sources without <sos>; targets as <sos> ... <eos>."""

    src: list[np.ndarray]
    tgt: list[np.ndarray]
    truncated: int = 0

    def __len__(self):
        return len(self.src)


def encode_pairs(pairs, tokenizer, cfg: DataConfig) -> Encoded:
    src, tgt, truncated = [], [], 0
    for inp, out in pairs:
        s = tokenizer.encode(inp) + ([EOS_ID] if cfg.src_eos else [])
        t = [SOS_ID] + tokenizer.encode(out) + [EOS_ID]
        if len(s) > cfg.max_src_len or len(t) > cfg.max_tgt_len + 1:
            truncated += 1
        s = s[: cfg.max_src_len] or [EOS_ID]
        t = t[: cfg.max_tgt_len + 1]
        src.append(np.asarray(s, np.int32))
        tgt.append(np.asarray(t, np.int32))
    return Encoded(src, tgt, truncated)


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


def collate(data: Encoded, idx, cfg: DataConfig) -> dict:
    """Pads a batch to lengths rounded up to ``bucket_multiple`` (few distinct shapes)."""
    srcs = [data.src[i] for i in idx]
    tgts = [data.tgt[i] for i in idx]
    s_len = min(_round_up(max(len(s) for s in srcs), cfg.bucket_multiple), cfg.max_src_len)
    t_len = min(_round_up(max(len(t) - 1 for t in tgts), cfg.bucket_multiple), cfg.max_tgt_len)
    b = len(idx)
    src = np.full((b, s_len), PAD_ID, np.int32)
    tgt = np.full((b, t_len + 1), PAD_ID, np.int32)
    for row, (s, t) in enumerate(zip(srcs, tgts)):
        src[row, : len(s)] = s
        tgt[row, : len(t)] = t
    return {"src": src, "src_len": np.asarray([len(s) for s in srcs], np.int32),
            "tgt_in": tgt[:, :-1], "tgt_out": tgt[:, 1:]}


class BatchIterator:
    """Length-bucketed batches: shuffle, sort within windows of 50 batches, shuffle batches.

    ``batches_per_epoch`` is fixed (the remainder is dropped), so the position
    ``(epoch, index)`` identifies a batch exactly.
    """

    WINDOW = 50

    def __init__(self, data: Encoded, batch_size: int, cfg: DataConfig, seed: int,
                 epoch: int = 0, index: int = 0):
        if len(data) < batch_size:
            raise DataError(f"only {len(data)} training pairs for train.batch_size={batch_size}; "
                            "use more data or a smaller batch")
        self.data, self.batch_size, self.cfg, self.seed = data, batch_size, cfg, seed
        self.batches_per_epoch = len(data) // batch_size
        self.epoch, self.index = epoch, index
        self._plan_epoch = None

    def _plan(self, epoch: int) -> list[np.ndarray]:
        if self._plan_epoch != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(len(self.data))[: self.batches_per_epoch * self.batch_size]
            size = self.WINDOW * self.batch_size
            batches = []
            for start in range(0, len(order), size):
                window = order[start: start + size]
                lengths = np.asarray([len(self.data.src[i]) + len(self.data.tgt[i]) for i in window])
                window = window[np.argsort(lengths, kind="stable")]
                batches += [window[j: j + self.batch_size] for j in range(0, len(window), self.batch_size)]
            self._batches = [batches[i] for i in rng.permutation(len(batches))]
            self._plan_epoch = epoch
        return self._batches

    def state(self) -> dict:
        return {"epoch": int(self.epoch), "index": int(self.index)}

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        idx = self._plan(self.epoch)[self.index]
        self.index += 1
        if self.index == self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        return collate(self.data, idx, self.cfg)

    def padding_fraction(self) -> float:
        """Fraction of pad tokens over one epoch of batches (sources and targets)."""
        pads = total = 0
        for idx in self._plan(self.epoch):
            batch = collate(self.data, idx, self.cfg)
            for key, real in (("src", batch["src_len"].sum()),
                              ("tgt_out", (batch["tgt_out"] != PAD_ID).sum())):
                total += batch[key].size
                pads += batch[key].size - real
        return pads / max(total, 1)


def eval_batches(data: Encoded, batch_size: int, cfg: DataConfig, limit: int = 0) -> list[dict]:
    """Fixed validation batches, sorted by length; the last one is padded with copies
    of its first row and a ``weight`` of 0 so every batch has the same size."""
    order = np.argsort([len(s) + len(t) for s, t in zip(data.src, data.tgt)], kind="stable")
    out = []
    for start in range(0, len(order), batch_size):
        idx = list(order[start: start + batch_size])
        weight = np.ones(batch_size, np.float32)
        weight[len(idx):] = 0.0
        idx += [idx[0]] * (batch_size - len(idx))
        batch = collate(data, idx, cfg)
        batch["weight"] = weight
        out.append(batch)
        if limit and len(out) >= limit:
            break
    return out
