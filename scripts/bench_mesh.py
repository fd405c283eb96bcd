"""Step time and per-device state bytes of the device mesh (train.parallel=mesh) against one device.

Runs on fake CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=N, set here before
JAX starts) or on whatever accelerators are present. Every row is measured in the same process,
so the ratios to the one-device row are the result; on a CPU the fake devices share the cores,
so a mesh cannot be faster there: the row shows the cost of the partitioned program.

    python scripts/bench_mesh.py [--config configs/gpt_tiny.yaml] [--devices 4] [--steps 10]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def _parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/gpt_tiny.yaml")
    p.add_argument("--devices", type=int, default=4, help="fake CPU devices (ignored on accelerators)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per mesh (after 2 warm-up steps)")
    p.add_argument("--set", action="append", default=[], help="config override section.key=value")
    return p.parse_args()


def _batch(model, rng, b, t):
    import numpy as np
    out = {}
    for key, x in model.example_batch(b, t).items():
        low, high = (1, t + 1) if key.endswith("_len") else (0, model.cfg.vocab_size)
        out[key] = rng.integers(low, high, size=x.shape).astype(np.int32)
    return out


def measure(path, overrides, steps):
    import jax
    import numpy as np
    from nety_jax.config import load_config
    from nety_jax.models import get_model
    from nety_jax.training.mesh import bytes_per_device
    from nety_jax.training.parallel import Runner
    cfg = load_config(path, overrides)
    model = get_model(cfg.model)
    runner = Runner(cfg, model)
    state = runner.place_state(runner.create_state(model, cfg.train, jax.random.PRNGKey(0)))
    rng = np.random.default_rng(0)
    length = cfg.data.seq_len or 32
    batch = _batch(model, rng, cfg.train.batch_size, length)
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        state, metrics = runner.train(state, batch)
        jax.block_until_ready(metrics)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times), bytes_per_device((state.params, state.opt_state))


def main():
    args = _parse()
    os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={args.devices}")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import jax
    n = jax.device_count()
    meshes = {"one device (none)": ["train.parallel=none"],
              f"data={n}": ["train.parallel=mesh"],
              f"fsdp={n}": ["train.parallel=mesh", f"train.mesh_fsdp={n}"]}
    if n % 2 == 0 and n > 2:
        meshes[f"fsdp={n // 2}, tensor=2"] = ["train.parallel=mesh", "train.mesh_data=1",
                                             f"train.mesh_fsdp={n // 2}", "train.mesh_tensor=2"]
    rows = {}
    for name, overrides in meshes.items():
        seconds, nbytes = measure(args.config, args.set + overrides, args.steps)
        rows[name] = {"step_s": seconds, "state_bytes_per_device": nbytes}
    base = rows["one device (none)"]
    print(f"{args.config} on {n} {jax.devices()[0].platform} devices, median of {args.steps} steps")
    print(f"{'mesh':<24} {'step (s)':>9} {'x one device':>13} {'state MB/device':>16} {'x one device':>13}")
    for name, r in rows.items():
        print(f"{name:<24} {r['step_s']:>9.4f} {r['step_s'] / base['step_s']:>13.2f} "
              f"{r['state_bytes_per_device'] / 2**20:>16.2f} "
              f"{r['state_bytes_per_device'] / base['state_bytes_per_device']:>13.3f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
