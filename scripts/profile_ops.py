"""Where the time goes: a jax.profiler trace of one compiled program, summed per HLO op.

Each op's time is mapped back to its shape and the source that emitted it (the
op_name metadata), then grouped: matmuls (dots and their fusions) against
everything else, and per source path. This is the "profile first" tool behind
docs/PERFORMANCE.md.

    python scripts/profile_ops.py train [--config configs/nety_parity.yaml] [--batch 32] [--len 32]
    python scripts/profile_ops.py decode [--batch 1] [--new-tokens 64]
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import shutil
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def op_table(compiled) -> dict:
    """HLO op name -> (shape, opcode, source path) from the compiled module's text."""
    info = {}
    for line in compiled.as_text().splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\([^)]*\)|\S+) (\w[\w\-]*)\(", line)  # tuple shapes too
        if m:
            name, shape, op = m.groups()
            meta = re.search(r'op_name="([^"]+)"', line)
            info[name] = (shape, op, meta.group(1) if meta else "")
    return info


def trace_ops(compiled, args, runs: int = 3, fresh=None) -> collections.Counter:
    """Microseconds per HLO op, averaged over ``runs`` executions; ``fresh(args)``: each execution's
    own arguments, made before the trace starts (a program that donates an input)."""
    calls = [args if fresh is None else fresh(args) for _ in range(runs + 1)]
    jax.block_until_ready(compiled(*calls.pop()))
    out = tempfile.mkdtemp()
    jax.profiler.start_trace(out, create_perfetto_trace=True)
    for call in calls:
        jax.block_until_ready(compiled(*call))
    jax.profiler.stop_trace()
    path = sorted(glob.glob(out + "/plugins/profile/*/perfetto_trace.json.gz"))[-1]
    events = json.load(gzip.open(path))
    events = events["traceEvents"] if isinstance(events, dict) else events
    total = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and "hlo_op" in e.get("args", {}):
            total[e["args"]["hlo_op"]] += e["dur"] / runs
    shutil.rmtree(out)
    return total


def _source(meta: str, depth: int) -> str:
    path = re.sub(r"jit\([^)]*\)/", "", meta)
    path = re.sub(r"\b(transpose|jvp|vmap|checkpoint)\(", "", path).replace(")", "")
    parts = [p for p in path.split("/") if p and not p.startswith(("while", "body", "closed_call"))]
    parts = [re.sub(r"layers_\d+", "layers_*", p) for p in parts]
    return "/".join(parts[:depth]) or "?"


def report(fn, args, title: str, depth: int = 4, top: int = 25) -> dict:
    compiled = jax.jit(fn).lower(*args).compile()
    info = op_table(compiled)
    # control flow (while, conditional, call) spans the ops inside it: count those once
    times = {name: us for name, us in trace_ops(compiled, args).items()
             if info.get(name, ("", "", ""))[1] not in ("while", "conditional", "call")}
    total = sum(times.values())
    kinds, sources = collections.Counter(), collections.Counter()
    for name, us in times.items():
        shape, op, meta = info.get(name, ("?", "?", ""))
        kinds["matmul" if ("dot" in name or "ynn" in name or op in ("dot", "convolution")) else "other"] += us
        sources[_source(meta, depth)] += us
    print(f"\n## {title}: {total / 1e3:.1f} ms of op time per run")
    print("| kind | ms | share |\n|---|---|---|")
    for kind, us in kinds.most_common():
        print(f"| {kind} | {us / 1e3:.1f} | {100 * us / total:.0f}% |")
    print("\n| source | ms | share |\n|---|---|---|")
    for src, us in sources.most_common(top):
        print(f"| {src} | {us / 1e3:.2f} | {100 * us / total:.1f}% |")
    return {"total_ms": total / 1e3, **{f"{k}_ms": v / 1e3 for k, v in kinds.items()}}


def main() -> int:
    from nety_jax.config import load_config
    from nety_jax.decoding import LoopSpec, SamplingParams, generate
    from nety_jax.models import get_model
    from nety_jax.training.steps import create_train_state, train_step

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("train", "decode"))
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "nety_parity.yaml"))
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--depth", type=int, default=4, help="source path components to group by")
    args = p.parse_args()
    cfg = load_config(args.config, [f"model.vocab_size={args.vocab}"] + args.overrides)
    model = get_model(cfg.model)
    rs = np.random.default_rng(0)
    b, n = args.batch, args.len
    if args.what == "train":
        batch = {"src": rs.integers(4, args.vocab, (b, n)).astype(np.int32),
                 "src_len": np.full(b, n, np.int32),
                 "tgt_in": rs.integers(4, args.vocab, (b, n)).astype(np.int32),
                 "targets": rs.integers(4, args.vocab, (b, n)).astype(np.int32)}
        if "tokens" in model.example_batch():  # a language model's batch format
            batch = {"tokens": batch["tgt_in"], "targets": batch["targets"]}
        state = create_train_state(model, cfg.train, jax.random.PRNGKey(0))
        report(lambda s, x: train_step(s, x, model=model, tcfg=cfg.train), (state, batch),
               f"train step, {cfg.model.arch}, batch {b}, length {n}", args.depth)
    else:
        variables = model.init(jax.random.PRNGKey(0))
        tokens = jnp.asarray(rs.integers(4, args.vocab, (b, n)), jnp.int32)
        lengths = jnp.full((b,), n, jnp.int32)
        params = SamplingParams.create(b, temperature=0.8, top_k=50, top_p=0.9)
        spec = LoopSpec(max_new_tokens=args.new_tokens, ignore_eos=True)
        report(lambda v, t, l, p_: generate(v, t, l, p_, model=model, spec=spec),
               (variables, tokens, lengths, params), f"generate {args.new_tokens} tokens, batch {b}",
               args.depth)
    return 0


if __name__ == "__main__":
    sys.exit(main())
