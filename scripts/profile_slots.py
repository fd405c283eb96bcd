"""The continuous engine's decode chunk against the dynamic engine's loop, per row-step and per op.

Both at the same rows (``--rows``, every one live), the same sampling settings as
``scripts/bench_serve.py`` sends (temperature 0.8, the server's top-k 50 / top-p 0.9,
<eos> masked) and the same number of steps: ``decoding.slots.decode_chunk`` over
``--rows`` slots against ``decoding.generation.continue_stream`` (the dynamic engine's
loop) on a batch of ``--rows`` prompts. Timed alternately in one process (only ratios
within a run mean anything on a shared machine; $PROFILE_SLOTS_MIN=1 takes each program's
fastest call instead of the median, steadier when other processes hold the cores), then a
per-HLO-op profile of each (``scripts/profile_ops.py``'s machinery).

    python scripts/profile_slots.py --checkpoint runs/demo
    python scripts/profile_slots.py --checkpoint /tmp/nety-bench-serve-gpt   # bench_serve.py's GPT

On a model whose slots have a memory (the hybrid) the chunk as the engine runs it (the memory
narrowed to the prompts' bucket: ``decode_chunk(memory=...)``) is also timed against the same
chunk reading the whole slot layout's memory (``continuous, whole memory``).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))


def _setup(checkpoint: str, rows: int, prompt_len: int):
    from nety_jax.serving.engine import PretrainedBackend
    from nety_jax.serving.pretrained import load_pretrained
    pre = load_pretrained(checkpoint)
    room = pre.model.prompts.max_new_tokens()
    dynamic = PretrainedBackend(pre, min(room, 256))  # as bench_serve.py's dynamic server
    spec = dataclasses.replace(dynamic.spec, min_new_tokens=1 << 20)
    rs = np.random.default_rng(0)
    tokens = rs.integers(4, pre.model.cfg.vocab_size, (rows, prompt_len)).astype(np.int32)
    lengths = np.full((rows,), prompt_len, np.int32)
    return pre, dynamic, spec, tokens, lengths


def continuous_program(pre, spec, tokens, lengths, steps: int, whole_memory: bool = False):
    """(compiled chunk, its args): ``steps`` tokens over len(tokens) live slots, reading the
    memory the engine has them read (``model.slot_memory`` of the prompts' width), or all of
    the slot layout's (``whole_memory``: the chunk before the memory was narrowed)."""
    from nety_jax.decoding import slots as device
    from nety_jax.data.prompts import bucket
    model, variables = pre.model, pre.variables
    rows = tokens.shape[0]
    room, source_len = model.prompts.max_new_tokens(), model.prompts.limit(pre.config.data, 1)
    width = model.slot_prompt_length(min(bucket(tokens.shape[1], pre.config.data.bucket_multiple), source_len),
                                     source_len)
    padded = np.zeros((rows, width), np.int32)
    padded[:, : tokens.shape[1]] = tokens
    settings = device.RowSettings.create([0.8] * rows, [50] * rows, [0.9] * rows, [room] * rows, list(range(rows)))
    state = device.empty(model, variables, rows, room, source_len)
    state = device.admit(variables, state, padded, lengths, settings, np.arange(rows, dtype=np.int32),
                         model=model, spec=spec, source_len=source_len)
    args = (variables, state, np.zeros(rows, bool), np.zeros(rows, np.int32), np.int32(steps))
    memory = 0 if whole_memory else model.slot_memory(width, source_len)
    static = {"model": model, "spec": spec, "width": steps + 1, "memory": memory}
    return functools.partial(device.decode_chunk, **static), args


def dynamic_program(pre, spec, tokens, lengths, steps: int):
    """(compiled loop, its args): the dynamic engine's ``continue_stream`` for ``steps`` tokens."""
    from nety_jax.decoding import SamplingParams, start_stream
    from nety_jax.decoding.generation import continue_stream
    from nety_jax.data.prompts import bucket
    model, variables = pre.model, pre.variables
    rows = tokens.shape[0]
    width = bucket(tokens.shape[1], pre.config.data.bucket_multiple)
    padded = np.zeros((rows, width), np.int32)
    padded[:, : tokens.shape[1]] = tokens
    params = SamplingParams.create(rows, temperature=0.8, top_k=50, top_p=0.9, max_new_tokens=spec.max_new_tokens,
                                   seed=list(range(rows)))
    state = start_stream(variables, padded, lengths, params, model=model, spec=spec)
    return functools.partial(continue_stream, model=model, spec=spec), (variables, state, np.int32(1 + steps))


def _fresh(args):
    """The args with the state (args[1], which the programs donate) copied."""
    return (args[0], jax.block_until_ready(jax.tree_util.tree_map(jnp.copy, args[1]))) + tuple(args[2:])


def alternate(programs: dict, rounds: int) -> dict:
    """Each program's median (wall, CPU) seconds per call, the programs called in turn every
    round, each on a fresh copy of its state (they donate it, as the engines do)."""
    wall, cpu = {name: [] for name in programs}, {name: [] for name in programs}
    for name, (fn, args) in programs.items():
        jax.block_until_ready(fn(*_fresh(args)))  # compile
    for _ in range(rounds):
        for name, (fn, args) in programs.items():
            call = _fresh(args)
            c, t = time.process_time(), time.perf_counter()
            jax.block_until_ready(fn(*call))
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    pick = np.min if os.environ.get("PROFILE_SLOTS_MIN") else np.median
    return {name: (float(pick(wall[name])), float(pick(cpu[name]))) for name in programs}


def top_ops(fn, lowered, args, title: str, top: int, runs: int = 5) -> None:
    """The ``top`` HLO ops by time per call, with their opcode, shape and source; and the
    op time by source (``profile_ops._source``)."""
    from profile_ops import _source, op_table, trace_ops
    info = op_table(lowered.compile())
    times = {n: us for n, us in trace_ops(fn, args, runs, fresh=_fresh).items()
             if info.get(n, ("", "", ""))[1] not in ("while", "conditional", "call")}
    total = sum(times.values())
    print(f"\n### {title}: {total / 1e3:.2f} ms of op time per call (threads overlap)")
    print("| op | us | opcode | shape | source |\n|---|---|---|---|---|")
    for name, us in sorted(times.items(), key=lambda kv: -kv[1])[:top]:
        shape, op, meta = info.get(name, ("?", "?", ""))
        print(f"| {name} | {us:.0f} | {op} | {shape[:40]} | {_source(meta, 9)[-80:]} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--prompt-len", type=int, default=5, help="prompt tokens (bench_serve.py's are 3-8)")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--no-profile", action="store_true", help="timings only, no per-op tables")
    p.add_argument("--ops", type=int, default=20, help="the slowest HLO ops listed per program")
    args = p.parse_args()
    pre, _, spec, tokens, lengths = _setup(args.checkpoint, args.rows, args.prompt_len)
    programs = {"continuous": continuous_program(pre, spec, tokens, lengths, args.steps),
                "dynamic": dynamic_program(pre, spec, tokens, lengths, args.steps)}
    if programs["continuous"][0].keywords["memory"]:  # the A/B of the memory narrowing
        programs["continuous, whole memory"] = continuous_program(pre, spec, tokens, lengths, args.steps, True)
    med = alternate(programs, args.rounds)
    per = lambda x: 1e3 * x / (args.steps * args.rows)
    print(f"{pre.config.model.arch}, {args.rows} rows x {args.steps} steps, load {os.getloadavg()[0]:.1f}, "
          f"{'minima' if os.environ.get('PROFILE_SLOTS_MIN') else 'medians'} of {args.rounds} alternating calls:")
    for k, (w, c) in med.items():
        print(f"  {k}: wall {1e3 * w:.2f} ms ({per(w):.4f} per row-step), CPU {1e3 * c:.2f} ms ({per(c):.4f})")
    for k, (w, c) in med.items():
        if k != "continuous":
            print(f"  continuous / {k}: wall {med['continuous'][0] / w:.3f}x, CPU {med['continuous'][1] / c:.3f}x")
    if not args.no_profile:
        for name, (fn, fargs) in programs.items():
            lowered = fn.func.lower(*fargs, **fn.keywords)  # the program the calls run
            top_ops(fn, lowered, fargs, f"{name}, {args.rows} rows x {args.steps} steps", args.ops)
    return 0


if __name__ == "__main__":
    sys.exit(main())
