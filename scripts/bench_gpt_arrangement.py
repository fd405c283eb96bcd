"""Does our GPT-2 train step run slower in a process that also runs PyTorch's? Same-run check.

    python scripts/bench_gpt_arrangement.py [--batch 8] [--len 256] [--repeats 3] [--tiny]
                                            [--workers shared ours hf]

Three worker processes of scripts/bench_gpt.py take turns round by round: ``shared`` runs our
AdamW step and HF GPT-2's one after the other (the arrangement bench_gpt.py had before
2026-12-05, glibc's malloc as `nety-jax` sets it), ``ours`` runs our step alone (the same
malloc setting), ``hf`` runs HF's step alone (malloc as PyTorch gets it); ``--workers`` picks
some of them (memory: each holds a model, its optimizer state and its step's temporaries; at
8 x 256 the shared one peaks at about 9 GB). Prints each step's median wall seconds, CPU
seconds and minor page faults (process-wide, every thread) as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_gpt  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--len", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tiny", action="store_true", help="tiny GPT sizes: a smoke run")
    p.add_argument("--workers", nargs="+", choices=("shared", "ours", "hf"), default=["shared", "ours", "hf"])
    args = p.parse_args(argv)
    cfg = bench_gpt.gpt_config(args.tiny)
    made = {"shared": lambda: bench_gpt.Worker(("ours", "hf"), cfg), "ours": lambda: bench_gpt.Worker(("ours",), cfg),
            "hf": lambda: bench_gpt.Worker(("hf",), cfg, malloc="default")}
    workers = {name: made[name]() for name in args.workers}
    turns = [(w, side) for w, side in (("shared", "ours"), ("shared", "hf"), ("ours", "ours"), ("hf", "hf"))
             if w in workers]
    for w, side in turns:  # warm-up: each process compiles / runs its step once
        workers[w].request(side, "train", args.batch, args.len)
    runs = {f"{w}/{side}": [] for w, side in turns}
    for _ in range(args.repeats):
        for w, side in turns:
            workers[w].request(side, "train", args.batch, args.len)
            runs[f"{w}/{side}"].append(workers[w].last)
    out = {"batch": args.batch, "len": args.len, "load_average": os.getloadavg(),
           "peak_rss_mb": {name: w.close() for name, w in workers.items()}}
    for key, replies in runs.items():
        out[key] = {k: statistics.median(r[k] for r in replies) for k in ("seconds", "cpu_s", "faults")}
        out[key]["rounds"] = [round(r["seconds"], 3) for r in replies]
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
