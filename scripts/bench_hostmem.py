"""`runtime.keep_host_memory` on and off: page faults and seconds per train step, processes alternating.

    python scripts/bench_hostmem.py [--models parity gpt generate probe] [--rounds 2] [--steps 3]
                                    [--modes default keep keep-arenas] [--json FILE]

Each (round, model, mode) is a fresh process (the host-memory setting is process-wide and fixed
before JAX starts), so the modes alternate round by round on a shared machine and only their
ratio in the same run means anything. A process compiles the step (the first call: its wall and
CPU seconds, and its voluntary context switches, which count waits on a contended lock such as
one malloc arena shared by XLA's compiling threads), then
times ``--steps`` calls one by one, each with its minor page faults (``getrusage``).

- ``parity``: the hybrid train step of configs/nety_parity.yaml as scripts/bench_parts.py runs it
  (V=8000, B=32, L=32, Adam);
- ``gpt``: a GPT-2-size train step (configs/gpt2_124m.yaml, 4 of its 12 layers, batch 4 x 128
  tokens, AdamW): GPT-2's widths, vocabulary and logits, a step short enough for a shared machine;
- ``generate``: that GPT's generation at batch 1 (16-token prompt, 32 new tokens, greedy), a
  "step" being one call (many small programs' worth of allocations from every thread);
- ``probe``: tests/test_runtime.py's probe (a jitted function with four 64 MB temporaries).

Modes: ``default`` (glibc as it is), ``keep`` (what every ``nety-jax`` command sets),
``keep-arenas`` (``keep`` without one malloc arena for every thread: ``keep`` before jax 0.11
needed that; on jax 0.10 the same as ``keep``).
Prints one JSON object: per model and mode the median faults and seconds per step, the compile
seconds, and keep / default ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ("parity", "gpt", "generate", "probe")
MODES = ("default", "keep", "keep-arenas")  # runtime.MALLOC_MODES


def _parity_step():
    from bench_parts import JaxTrainer, _train_batch, config
    cfg = config(argparse.Namespace(tiny=False, dtype="float32"), "nety_parity.yaml")
    trainer = JaxTrainer(cfg, _train_batch(cfg.model.vocab_size, 32, 32))
    return lambda: trainer.steps(1)


def _gpt_step():
    from bench_gpt import OurTrainer, gpt_config, token_batch
    cfg = gpt_config(extra=["model.layers=4"])
    trainer = OurTrainer(cfg, token_batch(cfg.model.vocab_size, 4, 128))
    return lambda: trainer.steps(1)


def _generate_step():
    from bench_gpt import OurGenerator, gpt_config
    gen = OurGenerator(gpt_config(extra=["model.layers=4"]), new_tokens=32, prompt_len=16)
    return lambda: gen.call(1, "greedy")


def _probe_step():
    import jax
    import jax.numpy as jnp
    f = jax.jit(lambda x: sum((jnp.sin(x * (i + 1)) @ jnp.cos(x)[:, i:i + 64]).sum() for i in range(4)))
    x = jnp.ones((4096, 4096))
    return lambda: f(x).block_until_ready()


def child(model: str, mode: str, steps: int) -> dict:
    """One process: the setting, then the model's step compiled and timed with its page faults."""
    import resource
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from bench_util import peak_rss_mb
    from nety_jax.runtime import keep_host_memory
    os.environ["NETY_JAX_HOST_MALLOC"] = mode  # bench_parts applies it too, at import
    applied = keep_host_memory(mode)
    steps_of = {"parity": _parity_step, "gpt": _gpt_step, "generate": _generate_step, "probe": _probe_step}
    step = steps_of[model]()

    def faults() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    usage, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    step()
    compile_s = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    # waits on a lock (one malloc arena for every thread) show as voluntary context switches
    compile_waits = after.ru_nvcsw - usage.ru_nvcsw
    compile_cpu_s = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
    seconds, page_faults = [], []
    for _ in range(steps):
        before, start = faults(), time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
        page_faults.append(faults() - before)
    return {"model": model, "mode": mode, "applied": applied, "compile_s": compile_s,
            "compile_cpu_s": compile_cpu_s, "compile_waits": compile_waits, "seconds": seconds,
            "faults": page_faults, "peak_rss_mb": peak_rss_mb()}


def run_child(model: str, mode: str, steps: int) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, os.path.abspath(__file__), "--child", model, mode, "--steps", str(steps)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"bench_hostmem: the {model}/{mode} process failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarize(runs: list[dict], modes: list[str]) -> dict:
    import jax
    out = {"python": sys.version.split()[0], "jax": jax.__version__, "models": {}}
    for model in dict.fromkeys(r["model"] for r in runs):
        per = {}
        for mode in modes:
            mine = [r for r in runs if r["model"] == model and r["mode"] == mode]
            per[mode] = {"applied": mine[0]["applied"],
                         "s_per_step": statistics.median(s for r in mine for s in r["seconds"]),
                         "faults_per_step": statistics.median(f for r in mine for f in r["faults"]),
                         "compile_s": [round(r["compile_s"], 2) for r in mine],
                         "compile_cpu_s": [round(r["compile_cpu_s"], 2) for r in mine],
                         "compile_waits": [r["compile_waits"] for r in mine],
                         "rounds_s": [round(statistics.median(r["seconds"]), 4) for r in mine],
                         "peak_rss_mb": max(r["peak_rss_mb"] for r in mine)}
        for mode in modes:
            if mode != "default" and "default" in per:
                per[f"{mode}_over_default_s"] = per[mode]["s_per_step"] / per["default"]["s_per_step"]
        out["models"][model] = per
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", choices=MODELS, default=["parity", "gpt"])
    p.add_argument("--modes", nargs="+", choices=MODES, default=["default", "keep"])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--json", default="")
    p.add_argument("--child", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child, args.steps)))
        return 0
    runs = []
    for r in range(args.rounds):
        for model in args.models:
            # alternate which mode goes first, so neither always follows the other
            for mode in (args.modes if r % 2 == 0 else args.modes[::-1]):
                runs.append(run_child(model, mode, args.steps))
                print(f"round {r + 1} {model} {mode}: faults {runs[-1]['faults']} "
                      f"s {[round(s, 3) for s in runs[-1]['seconds']]}", file=sys.stderr)
    result = summarize(runs, args.modes)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
