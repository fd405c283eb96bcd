"""Training speed: the jitted JAX step vs NETY's PyTorch step, side by side in one run.

NETY's dimensions (d_model 512, 3-layer BiLSTM 256, 6-layer decoder), V = 8000, batch 32,
source and target length 32, Adam. Prints seconds per step and target tokens/s.

    python scripts/bench_train.py [--vocab 8000] [--batch 32] [--len 32] [--steps 5] [--tiny]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

from nety_jax.config import load_config
from nety_jax.parallel import Runner
from nety_jax.steps import create_train_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--len", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--dtype", default="float32", help="bfloat16 on GPU/TPU")
    p.add_argument("--tiny", action="store_true", help="tiny dims (a smoke run, not a measurement)")
    args = p.parse_args()

    name = "tiny.yaml" if args.tiny else "nety_parity.yaml"
    cfg = load_config(os.path.join(ROOT, "configs", name),
                      [f"model.vocab_size={args.vocab}", f"train.batch_size={args.batch}",
                       f"model.dtype={args.dtype}", "train.optimizer=adam", "train.learning_rate=1e-4",
                       "train.schedule=constant", "train.warmup_steps=0", "train.clip_norm=0",
                       "train.label_smoothing=0"])
    rs = np.random.default_rng(0)
    b, n = args.batch, args.len
    src = rs.integers(4, args.vocab, (b, n)).astype(np.int32)
    tgt = rs.integers(4, args.vocab, (b, n + 1)).astype(np.int32)
    batch = {"src": src, "src_len": np.full(b, n, np.int32), "tgt_in": tgt[:, :-1], "tgt_out": tgt[:, 1:]}
    tokens = b * n
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}; d_model {cfg.model.d_model}, "
          f"V={args.vocab}, batch {b}, lengths {n}, {args.steps} timed steps", flush=True)

    runner = Runner(cfg, "none")
    state = create_train_state(cfg, jax.random.PRNGKey(0))
    start = time.perf_counter()
    state, m = runner.train(state, batch)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.steps):
        state, m = runner.train(state, batch)
    jax.block_until_ready(m)
    ours = (time.perf_counter() - start) / args.steps
    rows = [("nety-jax: jitted train_step (donated state)", ours)]
    print(f"  jax: {ours:.3f} s/step (first step with compilation {compile_s:.1f} s)", flush=True)

    try:
        import torch
        from nety_jax.torch_reference import HybridRNNTransformer
    except ImportError:
        print("(torch not installed: NETY's PyTorch step skipped)")
    else:
        torch.set_num_threads(os.cpu_count() or 1)
        m_ = cfg.model
        dims = dict(d_model=m_.d_model, hidden=m_.enc_hidden, layers=m_.enc_layers, enc_heads=m_.enc_heads,
                    dec_heads=m_.dec_heads, dec_layers=m_.dec_layers, d_ff=m_.d_ff, max_len=m_.max_len)
        if args.tiny:
            dims.update(d_model=64, hidden=32, enc_heads=4, dec_heads=8)
        model = HybridRNNTransformer(args.vocab, **dims).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        ts, tt = torch.from_numpy(src).long(), torch.from_numpy(tgt).long()

        def step():
            logits = model(ts, tt[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, args.vocab), tt[:, 1:].reshape(-1),
                                                     ignore_index=0)
            opt.zero_grad()
            loss.backward()
            opt.step()
        step()
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        ref = (time.perf_counter() - start) / args.steps
        rows.append(("NETY in PyTorch (re-creation), Adam", ref))

    print()
    print(f"| {'implementation':<45} | {'s/step':>7} | {'target tokens/s':>15} |")
    print(f"|{'-' * 47}|{'-' * 9}|{'-' * 17}|")
    for label, t in rows:
        print(f"| {label:<45} | {t:>7.3f} | {tokens / t:>15,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
