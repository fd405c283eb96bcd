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

ArrayRecord is imported on first use: the raw-file path does not need it.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import struct
import threading
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


def check_record(record: bytes) -> Optional[str]:
    """Why ``record`` is damaged (its checksum or sizes do not match), or None when it is intact."""
    if len(record) < _HEAD.size:
        return f"damaged (a record of {len(record)} bytes)"
    crc, n = _HEAD.unpack_from(record)
    body = memoryview(record)[_HEAD.size:]
    if zlib.crc32(body) != crc or len(body) < 4 * n or len(body) % 4:
        return "damaged (checksum mismatch)"
    if 4 * (n + sum(struct.unpack_from(f"<{n}I", body))) != len(body):
        return "damaged (sizes do not match)"
    return None


def checksum_matches(record: bytes) -> bool:
    """``check_record``'s test of the bytes alone (the sizes are checked where they are used)."""
    return len(record) >= _HEAD.size and not len(record) % 4 and \
        zlib.crc32(memoryview(record)[_HEAD.size:]) == _HEAD.unpack_from(record)[0]


def split_record(record: bytes) -> list[np.ndarray]:
    """The arrays of a record whose checksum matches, as views of its bytes."""
    problem = check_record(record)
    if problem is not None:
        raise DataError(f"a record {problem}; prepare the data again")
    n = _HEAD.unpack_from(record)[1]
    sizes = struct.unpack_from(f"<{n}I", record, _HEAD.size)
    values = np.frombuffer(record, np.int32, offset=_HEAD.size + 4 * n)
    out, at = [], 0
    for size in sizes:
        out.append(values[at: at + size])
        at += size
    return out


def decode_record(record: bytes, where) -> list[np.ndarray]:
    """The arrays of one record; a damaged record is a ``DataError`` naming ``where()``."""
    problem = check_record(record)
    if problem is not None:
        raise DataError(f"{where()}: {problem}; prepare the data again")
    return split_record(record)


def _write_error(path: str, error: RuntimeError) -> OSError:
    """ArrayRecord's failed write (a full disk, a vanished directory) as the ``OSError`` naming
    the file that Python's own writes raise, which the output guard reports in one line (it was
    a RuntimeError and a traceback)."""
    text = _first_line(error, "write failed")
    code = next((c for c, name in ((errno.ENOSPC, "No space left"), (errno.EDQUOT, "Disk quota"),
                                   (errno.EROFS, "Read-only"), (errno.EACCES, "Permission denied"),
                                   (errno.ENOENT, "No such file")) if name in text), errno.EIO)
    return OSError(code, os.strerror(code) if code != errno.EIO else text, path)


class ShardWriter:
    """Writes records to one ArrayRecord file; ``digest`` is the sha256 of all its records."""

    def __init__(self, path: str):
        from array_record.python.array_record_module import ArrayRecordWriter
        self.path, self.records, self._hash = path, 0, hashlib.sha256()
        # one record per chunk, uncompressed: random reads of single records (zstd, the default,
        # made each read several times slower: docs/PERFORMANCE.md)
        try:
            self._writer = ArrayRecordWriter(path, "group_size:1,uncompressed")
        except RuntimeError as e:
            raise _write_error(path, e) from None

    def write(self, arrays: Sequence[np.ndarray]) -> None:
        record = encode_record(arrays)
        self._hash.update(record)
        try:
            self._writer.write(record)
        except RuntimeError as e:
            raise _write_error(self.path, e) from None
        if not self.records:
            self.first_crc = _HEAD.unpack_from(record)[0]
        self.records += 1

    def close(self) -> str:
        try:
            self._writer.close()
        except RuntimeError as e:
            raise _write_error(self.path, e) from None
        return self._hash.hexdigest()

    def identity(self) -> dict:
        """What ``ShardReader`` checks when it opens the shard, after ``close``: its size in bytes and
        its first record's checksum (a shard of another prepare, even of as many records, differs)."""
        return {"bytes": os.path.getsize(self.path), "first_crc": getattr(self, "first_crc", None)}


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

    ``records(indices)`` is a batch's records, each checksum checked; ``reader[i]`` one record's
    arrays. Each shard has one ArrayRecord reader, without read-ahead or a thread pool (reads are
    random and small), read by ``seek`` and ``read``: its batched ``read(positions)`` (what Grain's
    ``ArrayRecordDataSource`` calls, for one record or many) pays thread hand-offs on every call,
    many times the read itself (docs/PERFORMANCE.md). A reader holds a
    position, so reads take a lock (the prefetch thread and the main thread share the reader).

    A damaged record (a checksum that does not match, a chunk ArrayRecord cannot read) or shard
    (truncated: its index is gone, so none of its records can be found) is a ``DataError`` naming
    the shard and record; with ``damage`` (``--skip-bad``) it is counted there instead and read
    as ``None``, which the datasets (``data.streamed``) turn into a row without loss."""

    OPTIONS = "readahead_buffer_size:0,max_parallelism:1"
    BUFFER = 32768  # bytes the file reader fetches a seek (Grain's choice)

    def __init__(self, directory: str, shards: list[dict], damage: Optional[Damage] = None):
        self.directory, self.shards, self.damage = directory, shards, damage
        self.offsets = np.cumsum([0] + [s["records"] for s in shards]).tolist()
        self._starts = np.asarray(self.offsets[:-1], np.int64)
        self._readers: dict[int, object] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.offsets[-1]

    def _path(self, k: int) -> str:
        return os.path.join(self.directory, self.shards[k]["file"])

    def _open(self, k: int):
        from array_record.python.array_record_module import ArrayRecordReader
        path = self._path(k)
        if not os.path.isfile(path):
            raise DataError(f"{path}: missing (listed in {MANIFEST}); prepare the data again")
        try:
            reader = ArrayRecordReader(path, self.OPTIONS, file_reader_buffer_size=self.BUFFER)
            if not reader.ok():  # a truncated file opens failed; closing it raises its reason
                reader.close()
                raise RuntimeError("")
        except (RuntimeError, ValueError) as e:
            raise DataError(f"{path}: damaged ({_first_line(e, 'truncated?')}); prepare the data again") \
                from None
        if reader.num_records() != self.shards[k]["records"]:
            raise DataError(f"{path}: holds {reader.num_records()} records, {MANIFEST} says "
                            f"{self.shards[k]['records']}; prepare the data again")
        if not self._is_listed_shard(k, path, reader):
            reader.close()
            raise DataError(f"{path}: is not the shard {MANIFEST} lists (another size or first record: a shard "
                            "of another prepare?); prepare the data again")
        return reader

    def _is_listed_shard(self, k: int, path: str, reader) -> bool:
        """The size and first record's checksum the manifest recorded (manifests before they were
        recorded: not checked). Checked once per shard, one record read."""
        listed = self.shards[k]
        if "bytes" in listed and os.path.getsize(path) != listed["bytes"]:
            return False
        if listed.get("first_crc") is None or not listed["records"]:
            return True
        try:
            reader.seek(0)
            first = reader.read()
        except RuntimeError:
            return True  # an unreadable record is reported where it is read, by its index
        return len(first) >= _HEAD.size and _HEAD.unpack_from(first)[0] == listed["first_crc"]

    def _reader(self, k: int):
        """Shard ``k``'s reader, or None when it is damaged and skipped."""
        if k not in self._readers:
            try:
                self._readers[k] = self._open(k)
            except DataError as e:
                if self.damage is None:
                    raise
                self.damage.shard(self.shards[k]["file"], self.shards[k]["records"], str(e))
                self._readers[k] = None
        return self._readers[k]

    def _damaged(self, k: int, local: int, problem: str) -> None:
        """Raises the ``DataError`` of shard ``k``'s record ``local``, or counts it (``--skip-bad``)."""
        message = f"{self._path(k)}: record {local}: {problem}"
        if self.damage is None:
            raise DataError(message)
        self.damage.record(self.shards[k]["file"], local, message)

    def _unreadable(self, k: int, local: int, error: RuntimeError) -> None:
        reader = self._readers.pop(k)  # a reader that failed stays failed: the next read opens the shard again
        with contextlib.suppress(RuntimeError):  # closing one reports its failure again
            reader.close()
        self._damaged(k, local, f"unreadable ({_first_line(error, 'no message')})")

    def records(self, indices) -> list[Optional[bytes]]:
        """The records at global ``indices`` whose checksums match (None: damaged and skipped), in
        their order (their sizes are checked where they are cut). One loop: it runs for every example."""
        indices = np.asarray(indices, np.int64).reshape(-1)
        shard = np.searchsorted(self._starts, indices, side="right") - 1
        local = indices - self._starts[shard] if len(indices) else indices
        out: list = []
        with self._lock:
            for k, i in zip(shard.tolist(), local.tolist()):
                reader = self._readers[k] if k in self._readers else self._reader(k)
                if reader is None:
                    out.append(None)
                    continue
                try:
                    reader.seek(i)
                    record = reader.read()
                except RuntimeError as e:
                    out.append(self._unreadable(k, i, e))
                    continue
                if not checksum_matches(record):
                    record = self._damaged(k, i, f"{check_record(record)}; prepare the data again")
                out.append(record)
        return out

    def __getitem__(self, i: int) -> Optional[list[np.ndarray]]:
        record = self.records([i])[0]
        return None if record is None else split_record(record)


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
    problem = _malformed(manifest)
    if problem:
        raise DataError(f"{path}: {problem}; prepare the data again")
    return manifest


def _malformed(manifest: dict) -> Optional[str]:
    """What in a manifest's structure is not what ``prepare`` writes (None: nothing)."""
    count = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0
    if not isinstance(manifest.get("data"), dict):
        return "'data' is not a mapping"
    splits = manifest["splits"]
    for split in ("train", "val"):
        info = splits.get(split) if isinstance(splits, dict) else None
        shards = info.get("shards") if isinstance(info, dict) else None
        if not isinstance(shards, list):
            return f"splits.{split}.shards is not a list"
        for k, shard in enumerate(shards):
            if not (isinstance(shard, dict) and isinstance(shard.get("file"), str) and count(shard.get("records"))
                    and count(shard.get("tokens", 0)) and not os.path.dirname(shard["file"])):
                return f"splits.{split}.shards[{k}] is not a shard (a file name, counts of records and tokens)"
    return None


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
