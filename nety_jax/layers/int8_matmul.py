"""Our int8 x float32 matrix product for decoding on the CPU: a ``jax.ffi`` custom call.

XLA's CPU backend reads int8 weights as float32 (it widens them first), so int8
decoding was no faster than float32 there (docs/PERFORMANCE.md). The kernel in
``int8_matmul.cc`` streams the int8 bytes and widens them in registers. It is
compiled on first use with the machine's C++ compiler (``-O3 -march=native``) into
a cache directory keyed by the source, the compiler flags and the CPU, then
registered with XLA; ``Linear`` uses it for a few rows (a decode step's batch) on
the CPU backend and keeps XLA's widened ``dot`` everywhere else.

``NETY_JAX_INT8_KERNEL=off`` turns it off; without a compiler (or if the build
fails) generation falls back to XLA's path with one warning. Exported artifacts
never contain the custom call (``portable()``): they must load anywhere.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import threading
from typing import Optional

import jax
import jax.numpy as jnp

TARGET = "nety_int8_matmul"
MAX_ROWS = 4  # above this many rows XLA's GEMM path wins (compute, not bytes, bounds it)
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "int8_matmul.cc")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC")

_lock = threading.Lock()
_state: dict = {}
_portable = threading.local()


def cache_dir() -> str:
    base = os.environ.get("NETY_JAX_KERNEL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "nety-jax", "kernels")
    return base


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
    path = os.path.join(out_dir, f"libnety_int8_{digest}.so")
    if os.path.exists(path):
        return path
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set CXX)")
    os.makedirs(out_dir, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    cmd = [compiler, *FLAGS, "-I", jax.ffi.include_dir(), SOURCE, "-o", tmp]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-500:]}")
    os.replace(tmp, path)  # atomic: concurrent builders never load a half-written library
    return path


def load() -> bool:
    """Builds (once per machine) and registers the kernel; False, with one warning, if it cannot."""
    with _lock:
        if "ok" not in _state:
            _state["ok"] = False
            if os.environ.get("NETY_JAX_INT8_KERNEL", "auto").lower() in ("off", "0", "false", "no"):
                return False
            try:
                lib = ctypes.cdll.LoadLibrary(_build(cache_dir()))
                jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.NetyInt8Matmul), platform="cpu")
                _state["ok"] = True
            except Exception as e:  # a missing compiler must not stop generation
                print(f"nety-jax: int8 kernel unavailable ({e}); using XLA's int8 path",
                      file=sys.stderr)
        return _state["ok"]


@contextlib.contextmanager
def portable():
    """Traces inside this block use XLA's path only (for ``jax.export``)."""
    previous = getattr(_portable, "on", False)
    _portable.on = True
    try:
        yield
    finally:
        _portable.on = previous


def usable(x: jax.Array, dtype) -> bool:
    """Whether ``Linear`` should call the kernel for input ``x`` (decided at trace time)."""
    if getattr(_portable, "on", False) or jnp.dtype(dtype) != jnp.float32:
        return False
    rows = 1
    for d in x.shape[:-1]:
        if not isinstance(d, int):  # a symbolic dimension (jax.export): keep XLA's path
            return False
        rows *= d
    return rows <= MAX_ROWS and jax.default_backend() == "cpu" and load()


def int8_matmul(x: jax.Array, kernel: jax.Array, scale: jax.Array, out_dtype: Optional[jnp.dtype] = None
                ) -> jax.Array:
    """(..., K) float32 @ (K, N) int8, times (N,) scales -> (..., N) float32, through the kernel."""
    k, n = kernel.shape
    rows = x.reshape(-1, k).astype(jnp.float32)
    call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((rows.shape[0], n), jnp.float32),
                            vmap_method="sequential")
    y = call(rows, kernel, scale.astype(jnp.float32))
    return y.reshape(x.shape[:-1] + (n,)).astype(out_dtype or jnp.float32)
