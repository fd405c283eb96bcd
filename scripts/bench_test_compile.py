"""XLA compile options on the programs a `nety-jax` command compiles, paired inside one process.

    python scripts/bench_test_compile.py [--set xla_cpu_parallel_codegen_split_count=1 ...] -- ARGV...
    python scripts/bench_test_compile.py -- train      # shorthand: a tiny train, 4 steps, fresh cache

Runs `nety-jax ARGV` in this process with a fresh persistent compilation cache, so every program
is compiled; each program XLA compiles is compiled twice, once as it is (the one that runs) and once with the
``--set`` options (XLA debug options, as ``jax.jit(...).lower(...).compile(compiler_options=...)``
passes them), in alternating order, each timed by this process's CPU time (every thread's) and by
the wall clock. The pairs share the process, its load and its caches, so their ratio holds on a
loaded machine where comparing separate processes does not (what the suite's 2 workers pay for
compiling is their CPU time: CI runs them on 2 cores kept busy). Set the suite's flags in the
environment (as tests/conftest.py does: 4 devices, LLVM -O0) to measure what the tests compile.
Prints one JSON object: per variant the summed CPU and wall seconds, the ratio, the program count,
and the programs (count, CPU seconds) by their compile CPU time as is.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = ["train", "--config", os.path.join(ROOT, "configs", "tiny.yaml"), "--steps", "4", "--no-progress",
         "--set", "train.eval_every=1000", "--set", "train.checkpoint_every=4", "--set", "data.vocab_size=120",
         "--set", "train.warmup_steps=1"]


def _parse(argv: list) -> tuple[dict, list]:
    options, i = {}, 0
    while i < len(argv) and argv[i] != "--":
        if argv[i] != "--set" or i + 1 >= len(argv) or "=" not in argv[i + 1]:
            sys.exit(f"usage: {__doc__.splitlines()[2].strip()}")
        key, value = argv[i + 1].split("=", 1)
        options[key], i = _value(value), i + 2
    return options or {"xla_cpu_parallel_codegen_split_count": 1}, argv[i + 1:]


def _value(text: str):
    """An XLA option's value as XLA parses it: a bool or an int as such, else the string."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return int(text) if text.lstrip("-").isdigit() else text


def _timed_compiles(options: dict, totals: dict) -> None:
    """Wraps JAX's backend compile: each program also compiled as is and with ``options``."""
    from jax._src import compiler
    from jax._src.lib import xla_client as xc
    real = compiler.backend_compile_and_load

    def compile_with(variant, backend, module, devices, compile_options, callbacks):
        copy = xc.CompileOptions.ParseFromString(compile_options.SerializeAsString())
        if variant == "with":
            copy.env_option_overrides = list(compile_options.env_option_overrides) + list(options.items())
        cpu, wall = time.process_time(), time.perf_counter()
        executable = real(backend, module, devices, copy, callbacks)
        totals[variant]["cpu_s"] += time.process_time() - cpu
        totals[variant]["wall_s"] += time.perf_counter() - wall
        if variant == "as_is":
            totals["program_cpu_s"].append(time.process_time() - cpu)
        return executable

    def paired(backend, module, devices, compile_options, callbacks):
        order = ("as_is", "with") if totals["programs"] % 2 == 0 else ("with", "as_is")
        executables = {v: compile_with(v, backend, module, devices, compile_options, callbacks) for v in order}
        totals["programs"] += 1
        return executables["as_is"]  # the program as JAX asked for it runs

    compiler.backend_compile_and_load = paired


def main() -> int:
    options, argv = _parse(sys.argv[1:])
    from nety_jax.runtime import keep_host_memory
    keep_host_memory()  # as `nety-jax` does, before JAX starts (NETY_JAX_HOST_MALLOC applies)
    totals = {"as_is": {"cpu_s": 0.0, "wall_s": 0.0}, "with": {"cpu_s": 0.0, "wall_s": 0.0}, "programs": 0,
              "program_cpu_s": []}
    _timed_compiles(options, totals)
    from nety_jax.cli import main as cli_main
    with tempfile.TemporaryDirectory(prefix="bench-test-compile-") as tmp:
        if argv in ([], ["train"]):
            argv = TRAIN + ["--workdir", os.path.join(tmp, "run")]
        code = cli_main(["--compile-cache", os.path.join(tmp, "cache"), *argv])
    result = {"argv": argv, "options": options, **totals, "load": os.getloadavg(),
              "malloc": os.environ.get("NETY_JAX_HOST_MALLOC", "keep"), "xla_flags": os.environ.get("XLA_FLAGS", "")}
    times = result.pop("program_cpu_s")
    # the programs by their compile CPU seconds (the persistent cache keeps a program by its wall
    # time: the CLI from 0.2 s, the suite's own processes from 0.05 s)
    result["programs_by_compile_cpu_s"] = {
        name: [sum(lo <= t < hi for t in times), round(sum(t for t in times if lo <= t < hi), 2)]
        for name, lo, hi in (("<0.05", 0, 0.05), ("0.05-0.2", 0.05, 0.2), (">=0.2", 0.2, float("inf")))}
    for key in ("cpu_s", "wall_s"):
        result[f"{key}_ratio_with_vs_as_is"] = round(totals["with"][key] / max(totals["as_is"][key], 1e-9), 3)
    print(json.dumps(result))
    return code


if __name__ == "__main__":
    sys.exit(main())
