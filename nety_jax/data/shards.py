"""Prepared data on disk: ArrayRecord shards of checksummed int32 records, and their manifest.

``nety-jax prepare`` writes a directory of

- ``{split}-{k:05d}.arrayrecord``: one record per example (a pair, a packed row) or per
  chunk of a token stream, each ``crc32, n, n lengths, int32 payload`` (ArrayRecord checks
  its chunk headers, not every payload byte: a flipped byte inside a record is caught by
  the record's own checksum);
- ``{split}.lengths.npy``: per-example lengths the batcher buckets on, memory-mapped at
  training (4 bytes per example and field, paged in on demand);
- ``prepared.json`` (``MANIFEST``): the task, the data config fields the encoding depends
  on, the tokenizer's digest, the sources' fingerprints, per-shard counts and digests and a
  length histogram; and the tokenizer's own files.

Grain and ArrayRecord are imported on first use: the raw-file path needs neither.
"""
from __future__ import annotations

import bisect
import hashlib
import json
import os
import struct
import zlib
from typing import Optional, Sequence

import numpy as np

from nety_jax.errors import DataError

MANIFEST = "prepared.json"
FORMAT = 1
_HEAD = struct.Struct("<II")  # crc32 of the rest, number of arrays


def shard_name(split: str, k: int) -> str:
    return f"{split}-{k:05d}.arrayrecord"


def encode_record(arrays: Sequence[np.ndarray]) -> bytes:
    """int32 arrays -> one record (their lengths first, then their values)."""
    body = struct.pack(f"<{len(arrays)}I", *(len(a) for a in arrays))
    body += b"".join(np.asarray(a, np.int32).tobytes() for a in arrays)
    return _HEAD.pack(zlib.crc32(body), len(arrays)) + body


def decode_record(record: bytes, where) -> list[np.ndarray]:
    """The arrays of one record; a damaged record is a ``DataError`` naming ``where()``."""
    if len(record) < _HEAD.size:
        raise DataError(f"{where()}: damaged (a record of {len(record)} bytes); prepare the data again")
    crc, n = _HEAD.unpack_from(record)
    body = memoryview(record)[_HEAD.size:]
    if zlib.crc32(body) != crc or len(body) < 4 * n:
        raise DataError(f"{where()}: damaged (checksum mismatch); prepare the data again")
    sizes = struct.unpack_from(f"<{n}I", body)
    values = np.frombuffer(body, np.int32, offset=4 * n)
    if len(values) != sum(sizes):
        raise DataError(f"{where()}: damaged (sizes do not match); prepare the data again")
    out, at = [], 0
    for size in sizes:
        out.append(values[at: at + size])
        at += size
    return out


class ShardWriter:
    """Writes records to one ArrayRecord file; ``digest`` is the sha256 of all its records."""

    def __init__(self, path: str):
        from array_record.python.array_record_module import ArrayRecordWriter
        self.path, self.records, self._hash = path, 0, hashlib.sha256()
        # one record per chunk, uncompressed: random reads of single records (zstd, the default,
        # made each read several times slower: docs/PERFORMANCE.md)
        self._writer = ArrayRecordWriter(path, "group_size:1,uncompressed")

    def write(self, arrays: Sequence[np.ndarray]) -> None:
        record = encode_record(arrays)
        self._hash.update(record)
        self._writer.write(record)
        self.records += 1

    def close(self) -> str:
        self._writer.close()
        return self._hash.hexdigest()


def _first_line(error: Exception, empty: str) -> str:
    """The first line of ArrayRecord's message (some errors have none)."""
    return (str(error).splitlines() or [empty])[0][:160]


class Damage:
    """Damaged records skipped under ``--skip-bad`` (shared by a prepared directory's readers):
    how many, and the first one's message. Records are counted once however often they are read."""

    def __init__(self):
        self._records: set = set()  # (shard file, record) of damaged records
        self._shards: dict = {}  # shard file -> its record count, for shards that cannot be opened
        self.first: Optional[str] = None

    def record(self, shard: str, local: int, message: str) -> None:
        self._records.add((shard, local))
        self.first = self.first or message

    def shard(self, shard: str, records: int, message: str) -> None:
        self._shards[shard] = records
        self.first = self.first or message

    @property
    def count(self) -> int:
        return sum(self._shards.values()) + sum(1 for s, _ in self._records if s not in self._shards)


class ShardReader:
    """Random access to the records of a split's shards, in order (global record index).

    A damaged record (a checksum that does not match, a chunk ArrayRecord cannot read) or shard
    (truncated: its index is gone, so none of its records can be found) is a ``DataError`` naming
    the shard and record; with ``damage`` (``--skip-bad``) it is counted there instead and read
    as ``None``, which the datasets (``data.streamed``) turn into a row without loss."""

    def __init__(self, directory: str, shards: list[dict], damage: Optional[Damage] = None):
        self.directory, self.shards, self.damage = directory, shards, damage
        self.offsets = np.cumsum([0] + [s["records"] for s in shards]).tolist()
        self._sources: dict[int, object] = {}

    def __len__(self) -> int:
        return self.offsets[-1]

    def _open(self, k: int):
        import grain
        path = os.path.join(self.directory, self.shards[k]["file"])
        if not os.path.isfile(path):
            raise DataError(f"{path}: missing (listed in {MANIFEST}); prepare the data again")
        try:
            source = grain.sources.ArrayRecordDataSource([path])
        except RuntimeError as e:
            raise DataError(f"{path}: damaged ({_first_line(e, 'truncated?')}); prepare the data again") \
                from None
        if len(source) != self.shards[k]["records"]:
            raise DataError(f"{path}: holds {len(source)} records, {MANIFEST} says "
                            f"{self.shards[k]['records']}; prepare the data again")
        return source

    def _source(self, k: int):
        """Shard ``k``'s source, or None when it is damaged and skipped."""
        if k not in self._sources:
            try:
                self._sources[k] = self._open(k)
            except DataError as e:
                if self.damage is None:
                    raise
                self.damage.shard(self.shards[k]["file"], self.shards[k]["records"], str(e))
                self._sources[k] = None
        return self._sources[k]

    def __getitem__(self, i: int) -> Optional[list[np.ndarray]]:
        k = bisect.bisect_right(self.offsets, i) - 1
        local = i - self.offsets[k]
        where = lambda: f"{os.path.join(self.directory, self.shards[k]['file'])}: record {local}"  # noqa: E731
        source = self._source(k)
        if source is None:
            return None
        try:
            try:
                record = source[local]
            except RuntimeError as e:
                raise DataError(f"{where()}: unreadable ({_first_line(e, 'no message')})") from None
            return decode_record(record, where)
        except DataError as e:
            if self.damage is None:
                raise
            self.damage.record(self.shards[k]["file"], local, str(e))
            return None


def length_histogram(lengths: np.ndarray) -> dict:
    """Counts per power-of-two bucket ``"[lo, hi)"`` of lengths (>= 1)."""
    if not len(lengths):
        return {}
    buckets = np.floor(np.log2(np.maximum(lengths, 1))).astype(np.int64)
    counts = np.bincount(buckets)
    return {f"[{2 ** b}, {2 ** (b + 1)})": int(c) for b, c in enumerate(counts) if c}


def merge_histograms(histograms: Sequence[dict]) -> dict:
    out: dict = {}
    for h in histograms:
        for k, v in h.items():
            out[k] = out.get(k, 0) + v
    return dict(sorted(out.items(), key=lambda kv: int(kv[0][1:].split(",")[0])))


def source_fingerprint(path: str) -> dict:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 18), b""):
            h.update(chunk)
    return {"path": os.path.abspath(path), "bytes": os.path.getsize(path), "sha256": h.hexdigest()}


def tokenizer_digest(directory: str) -> str:
    """sha256 of a tokenizer's saved files (``tokenizer.json`` names its model file)."""
    with open(os.path.join(directory, "tokenizer.json"), "rb") as f:
        descriptor = f.read()
    h = hashlib.sha256(descriptor)
    with open(os.path.join(directory, json.loads(descriptor)["file"]), "rb") as f:
        h.update(f.read())
    return h.hexdigest()[:16]


def read_manifest(directory: str) -> dict:
    path = os.path.join(directory, MANIFEST)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{directory}: no {MANIFEST} (not a directory `nety-jax prepare` wrote)") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable ({str(e)[:160]}); prepare the data again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or "splits" not in manifest:
        raise DataError(f"{path}: not a manifest of this version (format {FORMAT}); prepare the data again")
    return manifest


def write_manifest(directory: str, manifest: dict) -> None:
    with open(os.path.join(directory, MANIFEST), "w", encoding="utf-8") as f:
        json.dump({"format": FORMAT, **manifest}, f, indent=1)


def fingerprint(manifest: dict) -> str:
    """Of the prepared examples (every shard's digest, in order) and the encoding's fields."""
    h = hashlib.sha256(json.dumps(manifest["data"], sort_keys=True).encode())
    for split in sorted(manifest["splits"]):
        for shard in manifest["splits"][split]["shards"]:
            h.update(shard["sha256"].encode())
        h.update(manifest["splits"][split].get("order_sha256", "").encode())  # the split's dataset order
    return h.hexdigest()[:16]


def concat_lengths(directory: str, split: str, parts: Sequence[str], width: int) -> Optional[str]:
    """Concatenates per-shard ``.npy`` length files into ``{split}.lengths.npy`` (then removes them)."""
    if not parts:
        return None
    total = sum(np.load(os.path.join(directory, p), mmap_mode="r").shape[0] for p in parts)
    name = f"{split}.lengths.npy"
    out = np.lib.format.open_memmap(os.path.join(directory, name), "w+", np.int32, (total, width))
    at = 0
    for p in parts:
        part = np.load(os.path.join(directory, p))
        out[at: at + len(part)] = part
        at += len(part)
        os.remove(os.path.join(directory, p))
    out.flush()
    del out
    return name
