"""A demo-config run for the benchmarks that need a trained checkpoint (no JAX import here)."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def demo_run(path: str, steps: int, tag: str, warmup: int = 100) -> str:
    """``path`` if it holds a run, else a fresh run of configs/demo.yaml trained for ``steps``."""
    if os.path.isdir(os.path.join(path, "checkpoints")):
        return path
    out = tempfile.mkdtemp(prefix=f"{tag}-run-")
    print(f"[{tag}] no run in {path}: training the demo config for {steps} steps in {out}", flush=True)
    subprocess.run([sys.executable, "-m", "nety_jax.cli", "train", "--config", os.path.join(ROOT, "configs", "demo.yaml"),
                    "--workdir", out, "--steps", str(steps), "--no-progress", "--set", f"train.eval_every={steps}",
                    "--set", f"train.warmup_steps={warmup}"], cwd=ROOT, check=True, capture_output=True)
    return out
