"""Our CPU kernel for int8 decoding, a ``jax.ffi`` custom call (``cpu_kernels.cc``).

``int8_matmul``: int8 weights x a few float32 rows. XLA's CPU backend widens int8
weights to float32 first, so int8 decoding was no faster than float32 there; the
kernel streams the int8 bytes. ``Linear`` uses it for a decode step's batch.

It is compiled on first use with the machine's C++ compiler (``-O3
-march=native``) into a cache directory keyed by the source, the flags and the
CPU, then registered with XLA. It is used only on the CPU backend and outside
``portable()`` (exports: an artifact must load anywhere); everywhere else
``Linear`` keeps XLA's widened dot. ``NETY_JAX_CPU_KERNELS=off`` turns it off;
without a compiler (or if the build fails) it is off, with one warning.
docs/PERFORMANCE.md has what it measured, and the top-k and attention kernels
that were built, measured and dropped.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp

TARGET = "nety_int8_matmul"
MAX_ROWS = 4  # above this many rows XLA's GEMM path wins (compute, not bytes, bounds it)
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_kernels.cc")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC")

_lock = threading.Lock()
_state: dict = {}
_portable = threading.local()


def cache_dir() -> str:
    return os.environ.get("NETY_JAX_KERNEL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "nety-jax", "kernels")


def _cpu_key() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return platform.machine() + flags


def _build(out_dir: str) -> str:
    with open(SOURCE, "rb") as f:
        source = f.read()
    digest = hashlib.sha256(source + " ".join(FLAGS).encode() + _cpu_key().encode()
                            + jax.__version__.encode()).hexdigest()[:16]
    path = os.path.join(out_dir, f"libnety_kernels_{digest}.so")
    if os.path.exists(path):
        return path
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set CXX)")
    os.makedirs(out_dir, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    cmd = [compiler, *FLAGS, "-w", "-I", jax.ffi.include_dir(), SOURCE, "-o", tmp]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if "error" in line] or [proc.stderr.strip()]
        raise RuntimeError(f"{' '.join(cmd)} failed: {errors[0][-300:]}")
    os.replace(tmp, path)  # atomic: concurrent builders never load a half-written library
    return path


def load() -> bool:
    """Builds (once per machine) and registers the kernel; False, with one warning, if it cannot."""
    with _lock:
        if "ok" not in _state:
            _state["ok"] = False
            if os.environ.get("NETY_JAX_CPU_KERNELS", "auto").lower() in ("off", "0", "false", "no"):
                return False
            try:
                lib = ctypes.cdll.LoadLibrary(_build(cache_dir()))
                jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.NetyInt8Matmul), platform="cpu")
                _state["ok"] = True
            except Exception as e:  # a missing compiler must not stop generation
                print(f"nety-jax: int8 CPU kernel unavailable ({e}); using XLA's int8 path",
                      file=sys.stderr)
        return _state["ok"]


def enabled() -> bool:
    """Whether a trace now may call the kernel (decided at trace time)."""
    return not getattr(_portable, "on", False) and jax.default_backend() == "cpu" and load()


@contextlib.contextmanager
def portable():
    """Traces inside this block use XLA's operations only (for ``jax.export``)."""
    previous = getattr(_portable, "on", False)
    _portable.on = True
    try:
        yield
    finally:
        _portable.on = previous


def _static(*shapes) -> bool:
    """No symbolic dimension (``jax.export`` traces keep XLA's operations)."""
    return all(isinstance(d, int) for shape in shapes for d in shape)


def int8_usable(x: jax.Array, dtype) -> bool:
    """Whether ``Linear`` should call the int8 kernel for input ``x``."""
    return (jnp.dtype(dtype) == jnp.float32 and _static(x.shape)
            and math.prod(x.shape[:-1]) <= MAX_ROWS and enabled())


def int8_matmul(x: jax.Array, kernel: jax.Array, scale: jax.Array) -> jax.Array:
    """(..., K) float32 @ (K, N) int8, times (N,) scales -> (..., N) float32, through the kernel."""
    k, n = kernel.shape
    rows = x.reshape(-1, k).astype(jnp.float32)
    call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((rows.shape[0], n), jnp.float32),
                            vmap_method="sequential")
    y = call(rows, kernel, scale.astype(jnp.float32))
    return y.reshape(x.shape[:-1] + (n,))

