"""The read path of prepared data, before and after batched reads, in one process:
``python scripts/bench_data_read.py`` (about a minute; ``--pairs DIR`` / ``--text DIR`` reuse prepared ones).

It generates synthetic pairs (``--pairs-m`` million) and text (``--text-mb``), prepares them
(``configs/tiny.yaml`` pairs, ``configs/gpt_tiny.yaml`` windows and packed rows; a tokenizer
from a 1 MB sample, as ``scripts/bench_data_scale.py`` does), then, for each dataset, collates
the same batches of one ``BatchIterator`` plan (``train.batch_size`` of the config) two ways:

- ``per record``: the previous read path, kept here as the reference: each record read alone
  through Grain's ``ArrayRecordDataSource``, checked and split by ``shards.decode_record``, the
  batch padded row by row (``pad_pairs``; windows cut chunk by chunk);
- ``batched``: ``nety_jax.data.streamed`` (one ArrayRecord read per shard and batch, every
  record's checksum, the batch cut with NumPy).

Rounds of ``--batches`` batches alternate between the two (the median round counts); every
batch is checked equal. No prefetch thread: the input work alone, on one core. Timings are only
comparable within a run (the ratio): others share this machine's cores.
"""
from __future__ import annotations

import argparse
import bisect
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))
CONFIGS = os.path.join(ROOT, "configs")
QUIET = {"log": lambda *_: None, "progress": False}


class GrainRecords:
    """The previous ``ShardReader[i]``: one record through Grain's ArrayRecordDataSource, decoded."""

    def __init__(self, reader):
        import grain
        self.offsets = reader.offsets
        self.sources = [grain.sources.ArrayRecordDataSource([os.path.join(reader.directory, s["file"])])
                        for s in reader.shards]

    def __getitem__(self, i: int) -> list:
        from nety_jax.data.shards import decode_record
        k = bisect.bisect_right(self.offsets, i) - 1
        local = i - self.offsets[k]
        return decode_record(self.sources[k][local], lambda: f"shard {k}: record {local}")


def per_record(data):
    """The previous ``collate`` of ``data`` (a ``data.streamed`` dataset), record by record."""
    from nety_jax.config.sections import PAD_ID
    from nety_jax.data.pairs import pad_pairs
    records = GrainRecords(data.reader)
    kind = type(data).__name__
    if kind == "PairShards":
        def collate(idx):
            order = data._records(idx)
            longest = tuple(int(v) for v in data._lengths[order].max(axis=0))
            rows = [records[int(i)] for i in order]
            return pad_pairs([r[0] for r in rows], [r[1] for r in rows], data.cfg, longest)
    elif kind == "PackedShards":
        def collate(idx):
            rows = [records[int(i)] for i in idx]
            return {k: np.stack([r[j] for r in rows]).astype(np.int32) for j, k in enumerate(data.KEYS)}
    else:
        def tokens(start, stop):
            stop, out = min(stop, data.token_offsets[-1]), []
            while start < stop:
                k = bisect.bisect_right(data.token_offsets, start) - 1
                local = start - data.token_offsets[k]
                piece = records[data.reader.offsets[k] + local // data.chunk][0][local % data.chunk:]
                out.append(piece[: stop - start])
                start += len(out[-1])
            return np.concatenate(out) if out else np.zeros(0, np.int32)

        def collate(idx):
            rows = np.full((len(idx), data.seq_len + 1), PAD_ID, np.int32)
            for r, i in enumerate(idx):
                piece = tokens(int(i) * data.stride, int(i) * data.stride + data.seq_len + 1)
                rows[r, : len(piece)] = piece
            return {"tokens": rows[:, :-1], "targets": rows[:, 1:]}
    return collate


def compare(config: str, directory: str, batches: int, rounds: int, overrides=()) -> dict:
    """Examples per second of both read paths over the same batches, in alternating rounds."""
    from nety_jax.config import load_config
    from nety_jax.data.batching import BatchIterator
    from nety_jax.training.prepare_data import open_prepared
    cfg = load_config(config, ["data.subword_alpha=0", *overrides])
    _, split = open_prepared(cfg, directory)
    data, b = split.train, cfg.train.batch_size
    it = BatchIterator(data, b, cfg.train.seed)
    plan = [it.indices(0, i % it.batches_per_epoch) for i in range(batches * rounds)]
    ways = {"per_record": per_record(data), "batched": data.collate}
    for i in range(min(len(plan), 50)):  # the same batches, and warm caches for both
        a, c = ways["per_record"](plan[i]), ways["batched"](plan[i])
        assert a.keys() == c.keys() and all(np.array_equal(a[k], c[k]) for k in a), f"batch {i} differs"
    seconds: dict = {name: [] for name in ways}
    for r in range(rounds):
        chunk = plan[r * batches: (r + 1) * batches]
        for name, collate in ways.items():
            t0 = time.perf_counter()
            for idx in chunk:
                collate(idx)
            seconds[name].append(time.perf_counter() - t0)
    rate = {name: batches * b / statistics.median(s) for name, s in seconds.items()}
    return {"config": os.path.basename(config), "dataset": type(data).__name__, "batch_size": b,
            "examples_per_s": rate, "ratio": rate["batched"] / rate["per_record"], "load": os.getloadavg()[0]}


def make(tmp: str, pairs_m: float, text_mb: float, given: dict) -> dict:
    """Prepared pairs, text windows and packed text in ``tmp`` (but those ``given``)."""
    from bench_data import synthetic_text
    from bench_data_scale import head, synthetic_pairs
    from nety_jax.config import load_config
    from nety_jax.training.prepare_data import prepare_data
    out = {}
    for name, config, src, gen in (("pairs", "tiny.yaml", "pairs.jsonl", lambda p: synthetic_pairs(p, pairs_m)),
                                   ("text", "gpt_tiny.yaml", "text.txt", lambda p: synthetic_text(p, text_mb))):
        if given.get(name):
            continue
        src = os.path.join(tmp, src)
        gen(src)
        head(src, src + ".sample", 2**20)
        cfg = load_config(os.path.join(CONFIGS, config), ["data.subword_alpha=0"])
        prepare_data(cfg, [src + ".sample"], os.path.join(tmp, f"tok-{name}"), workers=1, **QUIET)
        for suffix, extra in (("", []), ("-packed", ["data.packing=true"])) if name == "text" else (("", []),):
            out[name + suffix] = os.path.join(tmp, f"prepared-{name}{suffix}")
            prepare_data(load_config(os.path.join(CONFIGS, config), ["data.subword_alpha=0", *extra]), [src],
                         out[name + suffix], tokenizer_from=os.path.join(tmp, f"tok-{name}"), **QUIET)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs-m", type=float, default=0.1, help="millions of synthetic pairs")
    ap.add_argument("--text-mb", type=float, default=5, help="MB of synthetic text")
    ap.add_argument("--pairs", help="a directory prepared with configs/tiny.yaml (instead of generating)")
    ap.add_argument("--text", help="a directory prepared with configs/gpt_tiny.yaml (instead of generating)")
    ap.add_argument("--batches", type=int, default=300, help="batches per round")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-data-read-") as tmp:
        dirs = {"pairs": args.pairs, "text": args.text}
        dirs.update(make(tmp, args.pairs_m, args.text_mb, dirs))
        runs = [("pairs", "tiny.yaml", []), ("text", "gpt_tiny.yaml", []),
                ("text-packed", "gpt_tiny.yaml", ["data.packing=true"])]
        for name, config, overrides in runs:
            if dirs.get(name):
                out = compare(os.path.join(CONFIGS, config), dirs[name], args.batches, args.rounds, overrides)
                print(json.dumps({name: out}), flush=True)


if __name__ == "__main__":
    main()
