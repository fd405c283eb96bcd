"""Prepared data against raw in-memory data, in one run: ``python scripts/bench_data.py``.

Generates synthetic text corpora of ``--mb`` sizes, then measures

- ``prepare`` throughput (MB of text and tokens per second, and per worker process);
- the input pipeline alone, each in its own process: batches per second and the peak RSS
  of reading a corpus's batches from its shards (``train --text DIR``) against reading the
  raw file into memory and encoding it (``train --text FILE``);
- training steps per second of the tiny GPT (``configs/gpt_tiny.yaml``) fed from shards
  and from the raw file (the mean of the logged intervals after the first, which holds the
  compilation).

Timings are only comparable within one run (a shared machine's cores vary); the output is
the table of docs/PERFORMANCE.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench_util import peak_rss_mb  # noqa: E402

CONFIG = os.path.join(ROOT, "configs", "gpt_tiny.yaml")
BATCHES = 300


def synthetic_text(path: str, mb: float, seed: int = 0) -> None:
    """Lines of 4 to 40 words drawn (Zipf-like) from 3,000 made-up words."""
    import numpy as np
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyzéè"))
    words = ["".join(rng.choice(letters, rng.integers(2, 9))) for _ in range(3000)]
    p = 1.0 / np.arange(1, len(words) + 1)
    p /= p.sum()
    target, written = int(mb * 2**20), 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            ids = rng.choice(len(words), size=(2000, 40), p=p)
            lens = rng.integers(4, 41, size=2000)
            block = "".join(" ".join(words[i] for i in row[:n]) + "\n" for row, n in zip(ids, lens))
            f.write(block)
            written += len(block.encode())


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def part(mode: str, source: str) -> dict:
    """One process: the batches of one epoch start (``BATCHES`` of them) from shards or a raw file."""
    from nety_jax.config import load_config
    from nety_jax.data.prefetch import Prefetcher
    from nety_jax.models import get_model
    from nety_jax.training.prepare_data import open_prepared
    cfg = load_config(CONFIG)
    task = get_model(cfg.model).task
    base = current_rss_mb()  # the interpreter, NumPy, JAX and the model code: the same in both modes
    start = time.perf_counter()
    if mode == "stream":
        _, data = open_prepared(cfg, source)
    else:
        from nety_jax.data.tokenizer import load_tokenizer
        tokenizer = load_tokenizer(os.path.join(os.path.dirname(source), "tokenizer"))
        data = task.encode(cfg, tokenizer, task.read(cfg, [source], False), source)
    iterator = Prefetcher(task.batches(data.train, cfg))
    first = None
    for i in range(BATCHES):
        next(iterator)
        if first is None:
            first = time.perf_counter() - start
            t0 = time.perf_counter()
    rate = (BATCHES - 1) / (time.perf_counter() - t0)
    iterator.close()
    return {"mode": mode, "examples": len(data.train), "first_batch_s": first, "batches_per_s": rate,
            "base_rss_mb": base, "peak_rss_mb": peak_rss_mb(), **rss_kinds_mb()}


def rss_kinds_mb() -> dict:
    """Resident memory now, split: anonymous (the process's own) and file pages (memory-mapped
    shards and lengths: clean page cache the kernel reclaims under pressure)."""
    with open("/proc/self/status") as f:
        rows = dict(line.split(":", 1) for line in f if line.startswith(("RssAnon", "RssFile")))
    return {k.lower(): int(v.split()[0]) / 1024 for k, v in rows.items()}


def run_part(mode: str, source: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--part", mode, source], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"})
    if out.returncode:
        raise SystemExit(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def train_rate(data: str, workdir: str, steps: int) -> float:
    """Training tokens per second, the mean of the logged intervals after the first (which
    holds the compilation)."""
    from nety_jax.config import load_config
    from nety_jax.training.loop import train
    cfg = load_config(CONFIG, [f"train.steps={steps}", "train.log_every=10", f"train.eval_every={steps}",
                               f"train.checkpoint_every={steps}", "train.eval_batches=1", "train.warmup_steps=5", "train.bleu_samples=0"])
    train(cfg, workdir, [data], log=lambda *_: None, progress=False)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    logged = [r["tokens_per_s"] for r in rows if r.get("split") == "train"][1:]
    return sum(logged) / len(logged)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, nargs="+", default=[8, 32], help="corpus sizes (MB of text)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--part", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.part:
        print(json.dumps(part(*args.part)))
        return
    from nety_jax.config import load_config
    from nety_jax.training.prepare_data import prepare_data
    cfg, tmp, rows = load_config(CONFIG), tempfile.mkdtemp(prefix="bench-data-"), []
    synthetic_text(os.path.join(tmp, "sample.txt"), 1)
    prepare_data(cfg, [os.path.join(tmp, "sample.txt")], os.path.join(tmp, "tokenizer"), workers=1,
                 log=lambda *_: None, progress=False)
    workers = os.cpu_count() or 1
    for mb in args.mb:
        text, out = os.path.join(tmp, f"text{mb:g}.txt"), os.path.join(tmp, f"prepared{mb:g}")
        synthetic_text(text, mb, seed=int(mb))
        start = time.perf_counter()
        manifest = prepare_data(cfg, [text], out, tokenizer_from=os.path.join(tmp, "tokenizer"), workers=workers,
                                per_shard=20_000, log=lambda *_: None, progress=False)
        seconds = time.perf_counter() - start
        tokens = sum(s["tokens"] for s in manifest["splits"].values())
        rows.append({"mb": mb, "prepare_s": seconds, "prepare_mb_s": mb / seconds,
                     "prepare_mb_s_per_worker": mb / seconds / workers, "tokens_per_s": tokens / seconds,
                     "stream": run_part("stream", out), "memory": run_part("memory", text)})
        print(json.dumps(rows[-1]), flush=True)
    rates = {mode: train_rate(data, os.path.join(tmp, f"run-{mode}"), args.steps) for mode, data in
             (("stream", os.path.join(tmp, "tokenizer")), ("memory", os.path.join(tmp, "sample.txt")))}
    print(json.dumps({"train_tokens_per_s_1mb": rates, "workers": workers}))


if __name__ == "__main__":
    main()
