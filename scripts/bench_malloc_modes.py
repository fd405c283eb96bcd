"""A command under each `NETY_JAX_HOST_MALLOC` mode, alternating: wall and CPU seconds, ratios.

    python scripts/bench_malloc_modes.py [--pairs 4] [--modes keep keep-arenas] [--json FILE] -- CMD ...
    python scripts/bench_malloc_modes.py --pairs 4 -- train    # shorthand: a cold-cache tiny train

Each pair runs CMD once per mode (the mode in the environment, which every ``nety-jax`` process,
the test process's ``run_main`` and the subprocesses inherit), in ABBA order across pairs, so a
load that drifts during the run favours neither. On a shared machine only the ratio of the modes
within one run means anything. ``train`` stands for a fresh-process ``nety-jax train`` of the tiny
hybrid (configs/tiny.yaml, 4 fake CPU devices, LLVM -O0 as the suite compiles, 4 steps) into a
fresh compilation cache: what the suite's CLI subprocesses mostly do (compile, start, load).
Prints one JSON object: per mode every run's wall and CPU seconds (the command and its children,
``getrusage``) and their medians, and the medians' ratio of each mode to the first.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# `nety-jax ARGV` with JAX's compile-time events summed (XLA's backend compile, tracing, lowering)
# and printed as the last line of stderr; the malloc mode applied first, as `nety-jax` does
_TIMED_CLI = """
import json, sys
from nety_jax.runtime import keep_host_memory
keep_host_memory()
import jax.monitoring
seconds = {}
def add(event, duration, **_):
    seconds[event] = seconds.get(event, 0.0) + duration
jax.monitoring.register_event_duration_secs_listener(add)
from nety_jax.cli import main
code = main(sys.argv[1:])
print(json.dumps({k.rsplit("/", 1)[-1]: round(v, 3) for k, v in seconds.items() if "compile" in k}), file=sys.stderr)
sys.exit(code)
"""


def _train_command(workdir: str) -> list:
    return [sys.executable, "-c", _TIMED_CLI, "--compile-cache", workdir + "-cache", "train",
            "--config", os.path.join(ROOT, "configs", "tiny.yaml"), "--workdir", workdir, "--steps", "4", "--no-progress",
            "--set", "train.eval_every=1000", "--set", "train.checkpoint_every=4", "--set", "data.vocab_size=120",
            "--set", "train.warmup_steps=1"]


def _env(mode: str) -> dict:
    env = dict(os.environ, NETY_JAX_HOST_MALLOC=mode, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    env.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0")
    return env


def run_once(command: list, mode: str) -> dict:
    """One run of ``command`` (``["train"]``: the tiny train) under ``mode``: wall and CPU seconds."""
    with tempfile.TemporaryDirectory(prefix="malloc-modes-") as tmp:
        argv = _train_command(os.path.join(tmp, "run")) if command == ["train"] else command
        before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        done = subprocess.run(argv, cwd=ROOT, env=_env(mode), capture_output=True, text=True)
        wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"{mode}: exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    waits = after.ru_nvcsw - before.ru_nvcsw
    row = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "voluntary_switches": waits}
    if command == ["train"]:
        row.update(json.loads(done.stderr.strip().splitlines()[-1]))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--modes", nargs="+", default=["keep", "keep-arenas"])
    parser.add_argument("--json", help="also write the result here")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="after --: the command, or `train`")
    args = parser.parse_args()
    command = [c for c in args.command if c != "--"] or ["train"]
    runs = {mode: [] for mode in args.modes}
    for pair in range(args.pairs):
        for mode in (args.modes if pair % 2 == 0 else args.modes[::-1]):
            runs[mode].append(run_once(command, mode))
            print(mode, runs[mode][-1], file=sys.stderr, flush=True)
    result = {"command": command, "load_at_end": os.getloadavg(), "modes": {}}
    for mode, rows in runs.items():
        result["modes"][mode] = {"runs": rows, **{f"median_{k}": statistics.median(r[k] for r in rows)
                                                  for k in rows[0]}}
    base = result["modes"][args.modes[0]]
    for mode in args.modes[1:]:
        m = result["modes"][mode]
        for key in [k for k in m if k.startswith("median_") and k != "median_voluntary_switches"]:
            m[key.replace("median_", "") + f"_vs_{args.modes[0]}"] = round(m[key] / base[key], 3)
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
