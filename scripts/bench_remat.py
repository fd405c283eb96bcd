"""Activation rematerialisation (train.remat): memory and step time of each policy, in one run.

For the base hybrid config and GPT-2 124M, the training step is compiled once per policy
(none, dots, full; the hybrid's recurrent encoder also per time step) and XLA's memory
analysis read: the temporaries are the gradients, the activations kept for the backward pass
and the scratch space (deterministic for a given jax version and shapes); beside them the bytes
the backward pass keeps from the forward (``jax.vjp``'s residuals, traced abstractly: what a
compiler that honours the checkpoints frees; XLA's CPU backend reports the same temporaries for
every policy, jax-ml/jax#19822). Then the compiled
steps run in alternating rounds (one step of each policy per round) and the median time of
each is reported as a ratio to ``none`` in the same rounds: the machine is shared, absolute
times are noisy, ratios less so. Small shapes keep the whole run to a few minutes on a CPU.

    PYTHONPATH=. python scripts/bench_remat.py [--rounds 3] [--out remat.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import numpy as np

from nety_jax.config import load_config
from nety_jax.models import get_model
from nety_jax.training.memory import residual_bytes
from nety_jax.training.parallel import Runner

CONFIGS = {  # name: (config, overrides): small batches, so the 124M step stays a few seconds
    "base (hybrid), B=8, S=T=32": ("configs/base.yaml", ["model.vocab_size=8000", "train.batch_size=8",
                                                         "data.max_src_len=32", "data.max_tgt_len=32"]),
    "GPT-2 124M, B=2, T=128": ("configs/gpt2_124m.yaml", ["train.batch_size=2", "data.seq_len=128",
                                                          "data.vocab_size=50257"]),
}
POLICIES = {"none": ["train.remat=none"], "dots": ["train.remat=dots"], "full": ["train.remat=full"]}


def random_batch(model, cfg) -> dict:
    rng = np.random.default_rng(0)
    batch = model.task.longest_batch(cfg)
    return {k: (v if k == "src_len" else rng.integers(4, cfg.model.vocab_size, v.shape).astype(np.int32))
            for k, v in batch.items()}


def compile_policies(path: str, sets: list, policies: dict) -> dict:
    """policy -> (compiled step, runner, MB of temporaries, MB of arguments)."""
    out = {}
    for name, extra in policies.items():
        cfg = load_config(path, sets + extra + ["train.parallel=none", "train.warmup_steps=0",
                                                "train.schedule=constant"])
        model = get_model(cfg.model)
        runner = Runner(cfg, model)
        state = runner.create_state(model, cfg.train, jax.random.PRNGKey(0))
        batch = runner.place_batch(random_batch(model, cfg))
        start = time.perf_counter()
        compiled = runner.lower_train(state, batch).compile()
        stats = compiled.memory_analysis()
        abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
        out[name] = {"compiled": compiled, "state": state, "batch": batch,
                     "compile_s": time.perf_counter() - start,
                     "kept_mb": residual_bytes(runner.model, abstract, batch, 1) / 2 ** 20,
                     "temp_mb": stats.temp_size_in_bytes / 2 ** 20,
                     "args_mb": stats.argument_size_in_bytes / 2 ** 20}
        print(f"  {name}: compiled in {out[name]['compile_s']:.1f} s, temporaries "
              f"{out[name]['temp_mb']:.1f} MB", flush=True)
    return out


def time_rounds(entries: dict, rounds: int) -> dict:
    """Median seconds per step of each policy, one step of each per round (after a warm-up)."""
    times = {name: [] for name in entries}
    for r in range(rounds + 1):
        for name, e in entries.items():
            start = time.perf_counter()
            e["state"], metrics = e["compiled"](e["state"], e["batch"])
            jax.block_until_ready(metrics)
            if r:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()
    rows = []
    for title, (path, sets) in CONFIGS.items():
        print(title, flush=True)
        entries = compile_policies(path, sets, POLICIES)
        seconds = time_rounds(entries, args.rounds)
        ref = entries["none"]
        for name, e in entries.items():
            rows.append({"config": title, "policy": name, "temp_mb": e["temp_mb"], "args_mb": e["args_mb"],
                         "kept_mb": e["kept_mb"], "kept_ratio": e["kept_mb"] / ref["kept_mb"],
                         "temp_ratio": e["temp_mb"] / ref["temp_mb"], "s_per_step": seconds[name],
                         "time_ratio": seconds[name] / seconds["none"]})
    print("\n| config | train.remat | temporaries MB (memory_analysis) | kept for backward MB (vjp residuals) "
          "| vs none | step time vs none | s/step |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['policy']} | {r['temp_mb']:.1f} | {r['kept_mb']:.1f} | {r['kept_ratio']:.2f}x | "
              f"{r['time_ratio']:.2f}x | {r['s_per_step']:.2f} |")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"jax": jax.__version__, "rounds": args.rounds, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
