"""NETY-parity architecture vs our defaults, trained identically on the embedded corpus.

Both use configs/demo.yaml's data, optimizer and steps; only the encoder/memory
fields differ. Prints validation loss, token accuracy, BLEU and chrF side by side.

    python scripts/compare_modes.py [--steps 500] [--seeds 0] [--workdir runs/compare]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

from nety_jax.config import load_config
from nety_jax.training.loop import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARITY = ["model.enc_attention_mask=false", "model.enc_attention_residual=false",
          "model.pooling=last_padded", "model.memory=pooled"]
MODES = {"NETY parity architecture": PARITY, "nety-jax defaults": []}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--seeds", default="0")
    p.add_argument("--workdir", default=os.path.join(ROOT, "runs", "compare"))
    args = p.parse_args()
    rows = []
    for name, overrides in MODES.items():
        for seed in [int(s) for s in args.seeds.split(",")]:
            workdir = os.path.join(args.workdir, f"{'parity' if overrides else 'defaults'}_{seed}")
            shutil.rmtree(workdir, ignore_errors=True)
            cfg = load_config(os.path.join(ROOT, "configs", "demo.yaml"),
                              overrides + [f"train.steps={args.steps}", f"train.seed={seed}",
                                           f"train.eval_every={args.steps}", "train.eval_batches=0",
                                           "train.bleu_samples=119"])
            start = time.perf_counter()
            summary = train(cfg, workdir, progress=False, log=lambda *_: None)
            val = summary["val"]
            rows.append((name, seed, val["loss"], val["accuracy"], val["bleu"], val["chrf"],
                         time.perf_counter() - start))
            print(f"{name} seed {seed}: {val}", flush=True)
    print()
    print(f"| {'mode':<26} | seed | val loss | accuracy |  BLEU |  chrF | seconds |")
    print(f"|{'-' * 28}|------|----------|----------|-------|-------|---------|")
    for name, seed, loss, acc, bleu, chrf, secs in rows:
        print(f"| {name:<26} | {seed:>4} | {loss:>8.3f} | {acc:>8.3f} | {bleu:>5.1f} | {chrf:>5.1f} | "
              f"{secs:>7.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
