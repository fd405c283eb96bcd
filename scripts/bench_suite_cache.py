"""The persistent-cache threshold for the test process's in-process `nety-jax` runs: CPU seconds.

    python scripts/bench_suite_cache.py [--runs 3] [--pairs 2] [--thresholds 0.2 0.05]

Each process sets up the suite's environment (tests/conftest.py: 4 fake devices, LLVM -O0, a
fresh compilation cache), then runs a tiny `nety-jax train` (4 steps) ``--runs`` times through
conftest.run_main, as the tests do, into new run directories, with the CLI's threshold for
caching a program (runtime.enable_compilation_cache's ``min_compile_seconds``: 0.2 s as shipped)
set to each of ``--thresholds`` in turn, processes alternating (ABBA). The first run compiles
cold; the later ones are what a test pays for a run whose programs this process compiled before
(new jitted functions, so only the persistent cache holds them). Prints one JSON line a process
(its runs' CPU seconds) and then the medians of the later runs per threshold and their ratio.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(threshold: float, runs: int) -> dict:
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import conftest  # the suite's environment, before JAX starts
    from nety_jax import runtime
    runtime.enable_compilation_cache = functools.partial(runtime.enable_compilation_cache,
                                                         min_compile_seconds=threshold)
    args = ["train", "--config", conftest.TINY, "--steps", "4", "--no-progress", "--set", "train.eval_every=1000",
            "--set", "train.checkpoint_every=4", "--set", "data.vocab_size=120", "--set", "train.warmup_steps=1"]
    tmp, cpu = tempfile.mkdtemp(prefix="bench-suite-cache-"), []
    for i in range(runs):
        start = time.process_time()
        done = conftest.run_main(*args, "--workdir", os.path.join(tmp, f"run{i}"))
        assert done.returncode == 0, done.stderr
        cpu.append(round(time.process_time() - start, 2))
    return {"threshold": threshold, "cpu_s": cpu}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--thresholds", type=float, nargs=2, default=[0.2, 0.05])
    p.add_argument("--child", type=float, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.runs)))
        return
    later = {t: [] for t in args.thresholds}
    for pair in range(args.pairs):
        for t in args.thresholds if pair % 2 == 0 else args.thresholds[::-1]:
            done = subprocess.run([sys.executable, __file__, "--child", str(t), "--runs", str(args.runs)], cwd=ROOT,
                                  capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
            if done.returncode != 0:
                sys.exit(done.stderr[-3000:])
            row = json.loads(done.stdout.strip().splitlines()[-1])
            print(json.dumps(row), flush=True)
            later[t] += row["cpu_s"][1:]
    a, b = (statistics.median(later[t]) for t in args.thresholds)
    print(json.dumps({"median_later_run_cpu_s": {str(t): statistics.median(v) for t, v in later.items()},
                      "ratio": round(b / a, 3), "load": os.getloadavg()}))


if __name__ == "__main__":
    main()
