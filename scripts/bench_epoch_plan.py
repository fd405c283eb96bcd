"""The epoch plan's cost: the windowed index shuffle (``data.batching``) against the whole-epoch
plan it replaced, in one run: ``python scripts/bench_epoch_plan.py [--examples 37100000]``.

- resume: the data side of a resume at the middle of an epoch of ``--examples`` synthetic
  examples (no corpus: lengths are a hash of the index, so the dataset itself holds nothing):
  building the iterator at the position and making its first batch's indices, each plan in a
  fresh process (wall, CPU seconds, and the growth of the process's peak RSS over its RSS
  before), for fixed lengths (token windows, nothing to sort) and varying ones (pairs); then the
  windowed plan alone at a tenth, 10x and 10**12 examples;
- steady state: CPU microseconds of the plan per batch over 20,000 consecutive batches;
- padding: ``padding_fraction`` over whole epochs (5 seeds) of the embedded corpus
  (``configs/tiny.yaml``'s tokenizer, batch 16 and 64) and of NETY-like pairs (1-50 words a
  side, lognormal, both sides cut to 50 tokens; batch 32), under both plans.

The whole-epoch plan is kept here (``WholeEpochPlan``), as it was, to be measured against.
Timings on a shared machine are only comparable within a run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench_util import status_mb  # noqa: E402
from nety_jax.data.batching import BatchIterator, _lengths  # noqa: E402


class WholeEpochPlan(BatchIterator):
    """The plan before the index shuffle: the whole epoch shuffled, sorted in windows of 50
    batches, its batches shuffled; one int32 per example resident."""

    _plan_epoch, _batches = None, None

    def _plan(self, epoch: int) -> np.ndarray:
        if self._plan_epoch != epoch:
            self._batches = None
            rng = np.random.default_rng([self.seed, epoch])
            order = np.arange(len(self.data), dtype=np.int32 if len(self.data) < 2**31 else np.int64)
            rng.shuffle(order)
            order = order[: self.batches_per_epoch * self.batch_size]
            size = self.WINDOW * self.batch_size
            sort = not getattr(self.data, "fixed_length", False)
            for start in range(0, len(order) if sort else 0, size):
                window = order[start: start + size]
                order[start: start + size] = window[np.argsort(_lengths(self.data, window), kind="stable")]
            batches = order.reshape(-1, self.batch_size)
            self._batches = batches[rng.permutation(len(batches))]
            self._plan_epoch = epoch
        return self._batches

    def _window(self, epoch: int, window: int) -> np.ndarray:
        return self._plan(epoch)[window * self.WINDOW: (window + 1) * self.WINDOW]


PLANS = {"whole_epoch": WholeEpochPlan, "windowed": BatchIterator}


class HashedLengths:
    """``n`` examples whose lengths (1-``top``) are a hash of the index: no per-example memory."""

    def __init__(self, n: int, top: int, fixed: bool):
        self.n, self.top, self.fixed_length = n, top, fixed

    def __len__(self):
        return self.n

    def lengths(self, idx):
        hashed = (np.asarray(idx, np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)
        return (hashed % np.uint64(self.top)).astype(np.int64) + 1

    def collate(self, idx):
        return {"idx": np.asarray(idx)}


def part_resume(plan: str, examples: int, batch: int, fixed: bool) -> dict:
    """In this fresh process: the iterator at the middle of epoch 3 and its first batch."""
    data = HashedLengths(examples, 64, fixed)
    np.random.SeedSequence(0).generate_state(1)  # NumPy loads numpy.random on first use: not the plan's memory
    before, wall, cpu = status_mb("VmRSS"), time.perf_counter(), time.process_time()
    it = PLANS[plan](data, batch, seed=0, epoch=3, index=(examples // batch) // 2)
    next(it)
    return {"plan": plan, "fixed_length": fixed, "wall_s": time.perf_counter() - wall,
            "cpu_s": time.process_time() - cpu, "peak_rss_growth_mb": status_mb("VmHWM") - before}


def steady_us_per_batch(examples: int, batch: int, n: int = 20_000) -> float:
    it = BatchIterator(HashedLengths(examples, 64, False), batch, seed=0)
    cpu = time.process_time()
    for _ in range(n):
        next(it)
    return 1e6 * (time.process_time() - cpu) / n


def embedded_corpus(batch_sizes=(16, 64)) -> dict:
    from nety_jax.config import load_config
    from nety_jax.models import get_model
    from nety_jax.training.setup import build_tokenizer
    cfg = load_config(os.path.join(ROOT, "configs", "tiny.yaml"), ["data.subword_alpha=0"])
    task = get_model(cfg.model).task
    corpus = task.read(cfg, task.default_paths(), False)
    data = task.encode(cfg, build_tokenizer(cfg, corpus.texts), corpus, "embedded").train
    return {f"embedded_b{b}": padding(data, b) for b in batch_sizes}


def nety_like(n: int = 20_000, batch: int = 32) -> dict:
    from nety_jax.config import DataConfig
    from nety_jax.data.pairs import Encoded
    rng = np.random.default_rng(1)
    words = np.clip(rng.lognormal(2.0, 0.7, (n, 2)), 1, 50).astype(int)
    src = [np.full(min(a + 1, 50), 5, np.int32) for a in words[:, 0]]  # + <eos>
    tgt = [np.full(min(b + 2, 51), 5, np.int32) for b in words[:, 1]]  # <sos> ... <eos>
    return {f"nety_like_b{batch}": padding(Encoded(src, tgt, DataConfig()), batch)}


def padding(data, batch: int, seeds=range(5)) -> dict:
    out = {}
    for name, plan in PLANS.items():
        values = [plan(data, batch, seed=s).padding_fraction(limit=10**9) for s in seeds]
        out[name] = {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values))}
    return out


def run_part(*args) -> dict:
    done = subprocess.run([sys.executable, __file__, "--part", *map(str, args)], capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=37_100_000, help="examples in the epoch (the 2 GB text's windows)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--skip-padding", action="store_true")
    ap.add_argument("--part", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.part:
        plan, examples, batch, fixed = args.part
        print(json.dumps(part_resume(plan, int(examples), int(batch), fixed == "True")))
        return
    say = lambda key, value: print(json.dumps({key: value}), flush=True)  # noqa: E731
    say("machine", {"cpus": os.cpu_count(), "load": os.getloadavg()[0], "examples": args.examples,
                    "batch": args.batch})
    for fixed in (True, False):
        for plan in PLANS:
            say("resume", run_part(plan, args.examples, args.batch, fixed))
    for examples in (args.examples // 10, args.examples * 10, 10**12):  # the windowed plan's cost is flat
        say("resume", {"examples": examples, **run_part("windowed", examples, args.batch, False)})
    say("windowed_steady_cpu_us_per_batch", steady_us_per_batch(args.examples, args.batch))
    if not args.skip_padding:
        say("padding", {**nety_like(), **embedded_corpus()})


if __name__ == "__main__":
    main()
