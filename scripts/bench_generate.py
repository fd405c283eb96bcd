"""Generation speed: nety-jax's jitted while_loop with a KV cache vs NETY's uncached loop.

Prints tokens/s for 64 new tokens (forced: <eos> ignored) at batch 1 and batch 64,
with NETY's dimensions, next to the same measurement of a simple uncached loop
(NETY's way: the whole prefix rerun each step) in JAX and, when torch is
installed, NETY's own PyTorch generate() re-creation (batch 1, as NETY).

    python scripts/bench_generate.py [--vocab 8000] [--new-tokens 64] [--tiny]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp

from nety_jax.config import DecodeConfig, load_config
from nety_jax.generate import generate_jit, generate_uncached
from nety_jax.model import init_variables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(fn, repeats):
    fn()  # compile / warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--src-len", type=int, default=32)
    p.add_argument("--batches", default="1,64")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tiny", action="store_true", help="tiny dims (a smoke run, not a measurement)")
    p.add_argument("--no-torch", action="store_true")
    args = p.parse_args()

    cfg_file = "tiny.yaml" if args.tiny else "nety_parity.yaml"
    cfg = load_config(os.path.join(ROOT, "configs", cfg_file),
                      [f"model.vocab_size={args.vocab}", "model.max_len=512"]).model
    variables = init_variables(cfg, jax.random.PRNGKey(0))
    dcfg = DecodeConfig(max_new_tokens=args.new_tokens, temperature=0.8, top_k=50, top_p=0.9,
                        ignore_eos=True)
    rows = []
    print(f"device: {jax.devices()[0].device_kind} x{jax.local_device_count()}, jax {jax.__version__}; "
          f"d_model {cfg.d_model}, decoder {cfg.dec_layers} layers, V={cfg.vocab_size}, "
          f"{args.new_tokens} new tokens, source length {args.src_len}", flush=True)
    for b in [int(x) for x in args.batches.split(",")]:
        src = jax.random.randint(jax.random.PRNGKey(1), (b, args.src_len), 4, cfg.vocab_size)
        lengths = jnp.full((b,), args.src_len, jnp.int32)
        ours = timed(lambda: jax.block_until_ready(
            generate_jit(variables, src, lengths, jax.random.PRNGKey(2), cfg=cfg, dcfg=dcfg)["tokens"]),
            args.repeats)
        rows.append(("nety-jax: jitted while_loop + KV cache", b, ours))
        print(f"  batch {b}: cached {b * args.new_tokens / ours:,.0f} tokens/s", flush=True)
        generate_uncached(variables, src, lengths, cfg=cfg, dcfg=dcfg, steps=1)  # compile
        start = time.perf_counter()
        generate_uncached(variables, src, lengths, cfg=cfg, dcfg=dcfg)
        slow = time.perf_counter() - start
        rows.append(("uncached loop, whole prefix each step (JAX)", b, slow))
        print(f"  batch {b}: uncached {b * args.new_tokens / slow:,.0f} tokens/s", flush=True)
    if not args.no_torch:
        try:
            import torch
            from nety_jax.torch_reference import HybridRNNTransformer, nety_generate
        except ImportError:
            print("(torch not installed: NETY's PyTorch loop skipped)")
        else:
            torch.set_num_threads(os.cpu_count() or 1)
            dims = dict(d_model=cfg.d_model, hidden=cfg.enc_hidden, layers=cfg.enc_layers,
                        enc_heads=cfg.enc_heads, dec_heads=cfg.dec_heads, dec_layers=cfg.dec_layers,
                        d_ff=cfg.d_ff, max_len=cfg.max_len)
            if args.tiny:
                dims.update(d_model=64, hidden=32, enc_heads=4, dec_heads=8)
            model = HybridRNNTransformer(cfg.vocab_size, **dims)
            src = torch.randint(4, cfg.vocab_size, (1, args.src_len))
            nety_generate(model, src, 2, force_length=True)  # warm up
            start = time.perf_counter()
            nety_generate(model, src, args.new_tokens, force_length=True)
            t = time.perf_counter() - start
            rows.append(("NETY generate() in PyTorch (re-creation)", 1, t))

    print()
    print(f"| {'implementation':<45} | {'batch':>5} | {'seconds':>8} | {'tokens/s':>9} |")
    print(f"|{'-' * 47}|{'-' * 7}|{'-' * 10}|{'-' * 11}|")
    for name, b, t in rows:
        print(f"| {name:<45} | {b:>5} | {t:>8.3f} | {b * args.new_tokens / t:>9,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
