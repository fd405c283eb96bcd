"""int8 weight-only quantization: speed, memory and quality against float32, in one run.

    python scripts/bench_quant.py [--checkpoint runs/demo] [--repeats 3]

Speed: NETY's dimensions (V=8000), 64 forced tokens at batch 1 and 64, float32 vs
int8 weights with float32 activations vs int8 with bfloat16 activations, rounds
alternating; and the products alone (every decoder kernel and the output head, 64
steps): float32 dot, XLA's widened int8 dot and our int8 kernel, for 1 to 8 rows. Memory: parameter bytes. Quality (a trained run; one is trained
briefly when --checkpoint has none): greedy agreement with float32 on up to 200
validation prompts, and the held-out loss of both.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def speed(repeats: int) -> list[tuple]:
    from bench_parts import JaxGenerator, config
    from nety_jax.models import get_model
    from nety_jax.serving.quantize import param_bytes, quantize_variables

    class Args:
        tiny, dtype = False, "float32"
    cfg = config(Args, "nety_parity.yaml")
    base = JaxGenerator(cfg)
    variants = {"float32": base}
    for acts in ("float32", "bfloat16"):
        gen = JaxGenerator.__new__(JaxGenerator)
        gen.model = get_model(cfg.model.replace(quant="int8", dtype=acts))
        gen.variables = jax.tree_util.tree_map(jnp.asarray, quantize_variables(jax.device_get(base.variables), cfg.model))
        variants[f"int8 weights, {acts} activations"] = gen
    times = {(k, b): [] for k in variants for b in (1, 64)}
    for gen in variants.values():
        for b in (1, 64):
            gen.call(b)
    for _ in range(repeats):
        for name, gen in variants.items():
            for b in (1, 64):
                start = time.perf_counter()
                gen.call(b)
                times[(name, b)].append(time.perf_counter() - start)
    return [(name, param_bytes(g.variables) / 2 ** 20, *(b * 64 / statistics.median(times[(name, b)]) for b in (1, 64)))
            for name, g in variants.items()]


def products(repeats: int) -> list[tuple]:
    """ms per decode step of NETY's decoder kernels and output head: float32, XLA int8, our kernel."""
    import numpy as np
    from nety_jax import kernels
    from nety_jax.layers.linear import quantize_kernel
    if not kernels.load():
        return []
    rs = np.random.default_rng(0)
    shapes = [(512, 1536), (512, 512), (512, 2048), (2048, 512)] * 6 + [(512, 8000)]
    quant = [quantize_kernel(rs.standard_normal(s).astype(np.float32) * 0.05) for s in shapes]
    forms = {"float32": lambda x, q, s, f: x @ f,
             "XLA int8": lambda x, q, s, f: (x @ q.astype(jnp.float32)) * s,
             "kernel": lambda x, q, s, f: kernels.int8_matmul(x, q, s)}
    weights = [(jnp.asarray(q), jnp.asarray(s), jnp.asarray(q * s)) for q, s in quant]
    out = []
    for rows in (1, 2, 4, 8):
        xs = {k: jnp.asarray(rs.standard_normal((rows, k)), jnp.float32) for k in (512, 2048)}

        def loop(form):
            def body(_, acc):
                for q, s, f in weights:
                    acc = acc + form(xs[q.shape[0]] + acc * 1e-9, q, s, f).sum()
                return acc
            return jax.jit(lambda: jax.lax.fori_loop(0, 64, body, jnp.zeros((rows, 1))))
        loops = {name: loop(form) for name, form in forms.items()}
        times = {name: [] for name in forms}
        for fn in loops.values():
            jax.block_until_ready(fn())
        for _ in range(repeats):
            for name, fn in loops.items():
                start = time.perf_counter()
                jax.block_until_ready(fn())
                times[name].append((time.perf_counter() - start) / 64 * 1e3)
        out.append((rows, *(statistics.median(times[name]) for name in forms)))
    return out


def trained(path: str) -> str:
    from demo_run import demo_run
    return demo_run(path, 400, "bench_quant")


def quality(checkpoint: str, limit: int = 200) -> dict:
    from nety_jax.data import eval_batches
    from nety_jax.serving.pretrained import load_pretrained
    from nety_jax.serving.quantize import quantize_run
    f32 = load_pretrained(checkpoint)
    out = tempfile.mkdtemp(prefix="bench-quant-int8-")
    os.rmdir(out)
    q8 = load_pretrained(quantize_run(checkpoint, out, log=lambda *_: None))
    cfg = f32.config
    task = f32.model.task
    corpus = task.read(cfg, task.default_paths(), False)
    prompts = [task.example_prompt(item) for item in corpus.val[:limit]]
    a = f32.generate(prompts, temperature=0.0)
    b = q8.generate(prompts, temperature=0.0)
    data = task.encode(cfg, f32.tokenizer, corpus, "")
    losses = []
    for m in (f32, q8):
        total = tokens = 0.0
        for batch in eval_batches(data.val, 32):
            sums, _ = m.model.loss_sums(m.variables, {k: jnp.asarray(v) for k, v in batch.items()})
            total, tokens = total + float(sums["nll_sum"]), tokens + float(sums["tokens"])
        losses.append(total / tokens)
    return {"prompts": len(prompts), "agreement": sum(x == y for x, y in zip(a, b)) / len(prompts),
            "loss_f32": losses[0], "loss_int8": losses[1]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=os.path.join(ROOT, "runs", "demo"))
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    rows = speed(args.repeats)
    kernel = products(max(args.repeats, 5))
    q = quality(trained(args.checkpoint))
    print("\n| weights | parameters | tokens/s, batch 1 | tokens/s, batch 64 |\n|---|---|---|---|")
    ref = rows[0]
    for name, mb, b1, b64 in rows:
        print(f"| {name} | {mb:,.1f} MB | {b1:,.0f} ({b1 / ref[2]:.2f}x) | {b64:,.0f} ({b64 / ref[3]:.2f}x) |")
    print("\n| rows | float32 dot | XLA int8 (widened) | our int8 kernel | kernel vs float32 |"
          "\n|---|---|---|---|---|")
    for r, f32, xla, ours in kernel:
        print(f"| {r} | {f32:.2f} ms | {xla:.2f} ms | {ours:.2f} ms | {f32 / ours:.1f}x |")
    if not kernel:
        print("\n(our int8 kernel is unavailable on this machine: XLA's path only)")
    print(f"\nQuality on {q['prompts']} validation prompts of {args.checkpoint}: greedy replies identical to "
          f"float32 for {100 * q['agreement']:.1f}%; held-out loss {q['loss_f32']:.4f} (float32) vs "
          f"{q['loss_int8']:.4f} (int8), delta {q['loss_int8'] - q['loss_f32']:+.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
