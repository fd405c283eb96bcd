"""Batched decoding with and without packed weight panels (``kernels.with_packed``), in one process.

    python scripts/bench_packed_decode.py [--batch 64] [--new-tokens 32] [--rounds 4] [--products]

Two compiled programs of the same batch-B top-k 50 generate call of GPT-2 124M
(``configs/gpt2_124m.yaml``, random weights, as ``scripts/bench_gpt.py`` makes them): one
reads the packed panels (what generation does), one the kernels as the model stores them
(``with_packed`` turned off while it is traced). Calls alternate, the order flipping every
round; the tokens and scores must be equal. ``--products`` times the products alone instead:
the output head and the 12 layers' four products at B rows, packed, unpacked and XLA's dot.
Ratios only mean something within one run (the machine is shared).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import bench_gpt  # noqa: E402
from nety_jax import kernels  # noqa: E402


def alternate(fns: dict, rounds: int) -> dict:
    """name -> seconds per call, each function called once per round, the order flipping."""
    seconds = {name: [] for name in fns}
    for r in range(rounds):
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            start = time.perf_counter()
            jax.block_until_ready(fns[name]())
            seconds[name].append(time.perf_counter() - start)
        print(r, {k: round(v[-1], 3) for k, v in seconds.items()}, "load", os.getloadavg()[0], flush=True)
    return seconds


def generate_programs(batch: int, new_tokens: int) -> dict:
    from nety_jax.decoding import SamplingParams
    from nety_jax.decoding.generation import generate
    gen = bench_gpt.OurGenerator(bench_gpt.gpt_config(), new_tokens, 8)
    args = (gen.variables, jnp.asarray(bench_gpt.token_batch(gen.model.cfg.vocab_size, batch, 7, seed=batch)),
            jnp.full((batch,), 8, jnp.int32),
            SamplingParams.create(batch, temperature=1.0, top_k=50, top_p=1.0, seed=batch))
    fn = lambda v, t, l, p: generate(v, t, l, p, model=gen.model, spec=gen.spec)  # noqa: E731
    packed = jax.jit(fn).lower(*args).compile()
    with_packed = kernels.with_packed
    kernels.with_packed = lambda variables, rows: variables
    try:
        unpacked = jax.jit(lambda *a: fn(*a)).lower(*args).compile()
    finally:
        kernels.with_packed = with_packed
    a, b = packed(*args), unpacked(*args)
    for key in ("tokens", "scores"):
        if not np.array_equal(np.asarray(a[key]), np.asarray(b[key])):
            raise SystemExit(f"packed and unpacked programs differ in {key}")
    return {"unpacked": lambda: unpacked(*args)["tokens"], "packed": lambda: packed(*args)["tokens"]}


def product_programs(batch: int) -> dict:
    """The output head and a 12-layer stack of GPT-2 124M's products, three ways."""
    rs = np.random.default_rng(0)
    x = jnp.asarray(rs.standard_normal((batch, 768)), jnp.float32)
    head = jnp.asarray(rs.standard_normal((768, 50257)) * 0.02, jnp.float32)
    shapes = [(768, 2304), (768, 768), (768, 3072), (3072, 768)]
    layers = [[jnp.asarray(rs.standard_normal(s) * 0.02, jnp.float32) for s in shapes] for _ in range(12)]

    def stack(product):
        def run(x, layers, packs):
            h = x
            for (qkv, out, up, down), (pq, po, pu, pd) in zip(layers, packs):
                h = h + product(product(h, qkv, pq)[:, :768], out, po)
                h = h + product(product(h, up, pu), down, pd) * 0.01
            return h
        return jax.jit(run)
    ways = {"packed": lambda x, w, p: kernels.matmul_packed(x, p, w), "unpacked": lambda x, w, p: kernels.matmul(x, w),
            "xla": lambda x, w, p: jnp.dot(x, w)}
    packs = jax.block_until_ready([[kernels.pack_panels(w) for w in layer] for layer in layers])
    head_pack = jax.block_until_ready(kernels.pack_panels(head))
    fns = {}
    for name, product in ways.items():
        head_fn, stack_fn = jax.jit(product), stack(product)
        fns[f"head_{name}"] = lambda f=head_fn: f(x, head, head_pack)
        fns[f"layers_{name}"] = lambda f=stack_fn: f(x, layers, packs)
    return fns


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--products", action="store_true", help="the products alone, not whole generate calls")
    args = p.parse_args(argv)
    if not (kernels.load() and kernels._state.get("matmul")):
        raise SystemExit("nety_matmul is not available here (no compiler or no AVX-512)")
    fns = product_programs(args.batch) if args.products else generate_programs(args.batch, args.new_tokens)
    for f in fns.values():
        jax.block_until_ready(f())
    seconds = alternate(fns, args.rounds)
    for name, values in seconds.items():  # each against its unpacked counterpart (x > 1: faster)
        base = seconds[name.replace("packed", "unpacked").replace("xla", "unpacked")
                       if not name.endswith("unpacked") else name]
        print(f"{name}: median {statistics.median(values):.3f} s, min {min(values):.3f} s; unpacked / "
              f"{name}: median {statistics.median(base) / statistics.median(values):.3f}x, "
              f"min {min(base) / min(values):.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
