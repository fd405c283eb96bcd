"""Model FLOPs utilisation: the architecture's analytic count over the devices' peak.

MFU = ``Model.train_flops(batch)`` (``models/flops.py``: matrix products only, forward +
backward, no credit for recomputation under ``train.remat``) per second, over the peak of
the devices the step runs on. The peak of a known accelerator comes from its vendor's
datasheet (dense, no structured sparsity); ``train.peak_tflops`` sets it for any other.
On the CPU there is no datasheet: a float32 matmul is timed once (well under a second)
and the figure is kept in the user cache (``~/.cache/nety-jax/peak.json``), keyed by the
processor and the jax version. Fake CPU devices share one processor, so on the CPU the
peak is the host's, not per device.
"""
from __future__ import annotations

import functools
import json
import os
import platform
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

# device_kind substring (first match wins) -> dense FLOP/s per chip: (bfloat16, float32).
# float32 is what XLA runs at default precision: TF32 tensor cores on NVIDIA Ampere and
# later, one bfloat16 pass on TPUs (so the same figure as bfloat16 there).
PEAKS = (
    ("H200", 989.4e12, 494.7e12),  # NVIDIA H200 SXM: same Hopper die and clocks as the H100 SXM
    ("H100 PCIe", 756.5e12, 378e12),  # datasheet: 1,513 / 756 TFLOP/s with sparsity
    ("H100", 989.4e12, 494.7e12),  # H100 SXM5 datasheet: 1,979 / 989 with sparsity
    ("A100", 312e12, 156e12),  # A100 datasheet: BF16 312, TF32 156
    ("TPU v6 lite", 918e12, 918e12),  # v6e (Trillium), Cloud TPU docs: 918 TFLOP/s bf16
    ("TPU v6e", 918e12, 918e12),
    ("TPU v5 lite", 197e12, 197e12),  # v5e, Cloud TPU docs: 197 TFLOP/s bf16
    ("TPU v5e", 197e12, 197e12),
    ("TPU v5p", 459e12, 459e12),  # v5p, Cloud TPU docs: 459 TFLOP/s bf16
    ("TPU v5", 459e12, 459e12),  # v5p's device_kind
)
CPU_MATMUL_N = 512


def table_peak(device_kind: str, dtype: str) -> Optional[float]:
    """The datasheet peak of one device of ``device_kind`` for ``dtype`` (None: not in PEAKS)."""
    for name, bf16, f32 in PEAKS:
        if name.lower() in device_kind.lower():
            return bf16 if dtype == "bfloat16" else f32
    return None


def _cache_path() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "nety-jax", "peak.json")


def _cpu_key(dtype: str) -> str:
    return f"{platform.processor() or platform.machine()}|{os.cpu_count()}|jax {jax.__version__}|{dtype}"


def time_matmul(dtype: str, n: int = CPU_MATMUL_N, repeats: int = 5) -> float:
    """FLOP/s of a chain of four n x n products on the first device (best of ``repeats``)."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.dtype(dtype)) / np.sqrt(n)
    chain = jax.jit(lambda x: x @ x @ x @ x @ x)
    jax.block_until_ready(chain(a))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(chain(a))
        best = min(best, time.perf_counter() - start)
    return 4 * 2 * n ** 3 / best


@functools.lru_cache(maxsize=None)
def cpu_peak(dtype: str) -> float:
    """The host's measured matmul FLOP/s, read from the user cache when measured before."""
    path, key = _cache_path(), _cpu_key(dtype)
    try:
        with open(path, encoding="utf-8") as f:
            cached = json.load(f)
    except (OSError, ValueError):
        cached = {}
    if isinstance(cached, dict) and isinstance(cached.get(key), (int, float)) and cached[key] > 0:
        return float(cached[key])
    peak = time_matmul("float32" if dtype != "bfloat16" else dtype)
    try:  # a cache that cannot be written only costs the next process a measurement
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({**(cached if isinstance(cached, dict) else {}), key: peak}, f)
        os.replace(tmp, path)
    except OSError:
        pass
    return peak


def peak_flops(devices: int, dtype: str, override_tflops: float = 0.0) -> tuple[Optional[float], str]:
    """(FLOP/s of ``devices`` devices together, where the figure comes from); None when unknown."""
    device = jax.devices()[0]
    if override_tflops > 0:
        return override_tflops * 1e12 * devices, f"train.peak_tflops={override_tflops:g} per device"
    if device.platform == "cpu":
        return cpu_peak(dtype), f"measured {dtype} matmul on this CPU (shared by its devices)"
    per_device = table_peak(device.device_kind, dtype)
    if per_device is None:
        return None, f"{device.device_kind} is not in the table: set train.peak_tflops"
    return per_device * devices, f"{device.device_kind} datasheet, {dtype}, x {devices}"


class Throughput:
    """Sums the analytic FLOPs of the steps since the last log line; ``mfu(seconds)``."""

    def __init__(self, model, peak: Optional[float]):
        self.model, self.peak, self.flops = model, peak, 0.0

    def add(self, batch: dict) -> None:
        if self.flops is not None:
            count = self.model.train_flops(batch)
            self.flops = None if count is None else self.flops + count

    def values(self, seconds: float) -> dict:
        """``mfu`` and ``tflops_per_s`` over ``seconds`` (None where unknown), then resets."""
        rate = None if self.flops is None else self.flops / max(seconds, 1e-9)
        self.flops = None if self.flops is None else 0.0
        return {"tflops_per_s": None if rate is None else rate / 1e12,
                "mfu": None if rate is None or not self.peak else rate / self.peak}
