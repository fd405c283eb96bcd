"""Our CPU kernels for decoding, as ``jax.ffi`` custom calls (``cpu_kernels.cc``).

- ``int8_matmul``: int8 weights x float32 rows. XLA's CPU backend widens int8
  weights to float32 first, so int8 decoding was no faster than float32 there;
  the kernel streams the int8 bytes. ``Linear`` uses it for a few rows (a decode
  step's batch).
- ``top_k``: each row's k largest values and indices, as ``lax.top_k`` (sorted,
  ties to the lower index). XLA's CPU TopK sat on a batched decode step's critical path.
- ``decode_attention``: one query a row over the filled positions of its KV cache
  only (XLA's masked product reads every position of every cache every step).
- ``matmul``: float32 x @ w for a batched decode step (``MATMUL_ROWS`` rows), the next
  weight panel prefetched while one is computed: XLA's GEMM stalls on weights that
  stream from memory at every step. Differentiated as XLA's product. For a few rows (up to
  ``MATVEC_ROWS``: a decode step at batch 1-8, a speculative verification's last token and
  draft) the same call goes to ``nety_matvec``, which reads the weights once for all rows and
  splits their rows over the threads: XLA runs a matrix-vector product on one thread, so one
  core's share of the memory bandwidth bounded batch-1 decoding, and 2+ rows go through its
  GEMM, which reads the weights at about half that speed.
  ``matmul_t`` is the same for x @ w.T (``nety_matvec_t``: a tied output head).
- ``matmul_packed``: ``nety_matmul``'s product (bit-identical) with the weights' 48-column
  panels packed contiguous (``pack_panels``). Generation packs them once per call, before its
  loop (``with_packed``: a ``packed`` variable collection beside ``params`` that ``Linear``
  reads), so every step streams each panel as one run of memory instead of 192 bytes from
  each of K rows a page apart.

Each kernel's Python side is a module of its own (``int8.py``, ``topk.py``, ``attention.py``,
``products.py``: its ``*_usable`` check and its call), re-exported here; this module builds and
registers the library and decides, at trace time, whether a trace may use it (``enabled``,
``portable``, ``gpu_path``).

The kernels split their work over XLA's own intra-op threads (helper threads of our
own competed with them for the cores: docs/PERFORMANCE.md).

The kernels are compiled on first use with the machine's C++ compiler (``-O3
-march=native``) into a cache directory keyed by the source, the flags and the
CPU, then registered with XLA. They are used only on the CPU backend and outside
``portable()`` (exports: an artifact must load anywhere); everywhere else the
callers keep XLA's own operations. ``NETY_JAX_CPU_KERNELS=off`` turns them off;
without a compiler (or if the build fails) they are off, with one warning.
docs/PERFORMANCE.md has what each one measured.

The GPU fast paths (cuDNN's fused attention in ``layers/attention.py``, cuDNN's LSTM in
``layers/recurrent.py``) are chosen the same way: in Python, at trace time, by ``backend()``,
never inside ``portable()``. ``NETY_JAX_GPU_FAST_PATHS`` (``on``, ``off`` or a comma list of
``GPU_PATHS``) turns them off one by one, for A/B measurements (scripts/bench_gpu.py).
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

import jax
import jax.numpy as jnp

TARGET = "nety_int8_matmul"
TOP_K_TARGET = "nety_top_k"
ATTENTION_TARGET = "nety_decode_attention"
MATMUL_TARGET = "nety_matmul"
MATVEC_TARGET = "nety_matvec"
MATVEC_T_TARGET = "nety_matvec_t"
MATMUL_PACKED_TARGET = "nety_matmul_packed"
TARGETS = (TARGET, TOP_K_TARGET, ATTENTION_TARGET, MATMUL_TARGET, MATVEC_TARGET, MATVEC_T_TARGET,
           MATMUL_PACKED_TARGET)  # every custom call we register
PANEL = 48  # columns of a packed panel (kPanel in cpu_kernels.cc)
MAX_ROWS = 4  # above this many rows XLA's GEMM path wins for int8 (compute, not bytes, bounds it)
MATVEC_ROWS = 8  # nety_matvec / nety_matvec_t take up to this many float32 rows (kMatvecMaxRows)
# the smallest weight matrix (elements) nety_matvec / nety_matvec_t take: a smaller one sits in
# cache and its product takes about as long as handing half of it to another thread
MATVEC_MIN_WEIGHTS = 1 << 18
# rows where nety_matmul beat XLA's GEMM inside generation (docs/PERFORMANCE.md, the optimisation
# table's nety_matmul rows: XLA's GEMM is fast up to 48 rows, ours falls behind past 160)
MATMUL_ROWS = (56, 160)
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
    """Builds (once per machine) and registers the kernels; False, with one warning, if it cannot."""
    with _lock:
        if "ok" not in _state:
            _state["ok"] = False
            if os.environ.get("NETY_JAX_CPU_KERNELS", "auto").lower() in ("off", "0", "false", "no"):
                return False
            try:
                lib = ctypes.cdll.LoadLibrary(_build(cache_dir()))
                jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.NetyInt8Matmul), platform="cpu")
                jax.ffi.register_ffi_target(TOP_K_TARGET, jax.ffi.pycapsule(lib.NetyTopK), platform="cpu")
                jax.ffi.register_ffi_target(ATTENTION_TARGET, jax.ffi.pycapsule(lib.NetyDecodeAttention),
                                            platform="cpu")
                jax.ffi.register_ffi_target(MATMUL_TARGET, jax.ffi.pycapsule(lib.NetyMatmul), platform="cpu")
                jax.ffi.register_ffi_target(MATVEC_TARGET, jax.ffi.pycapsule(lib.NetyMatvec), platform="cpu")
                jax.ffi.register_ffi_target(MATVEC_T_TARGET, jax.ffi.pycapsule(lib.NetyMatvecT), platform="cpu")
                jax.ffi.register_ffi_target(MATMUL_PACKED_TARGET, jax.ffi.pycapsule(lib.NetyMatmulPacked),
                                            platform="cpu")
                _state["matmul"] = bool(lib.NetyMatmulFast())
                _state["ok"] = True
            except Exception as e:  # a missing compiler must not stop generation
                print(f"nety-jax: CPU kernels unavailable ({e}); using XLA's operations",
                      file=sys.stderr)
        return _state["ok"]


GPU_PATHS = ("attention", "lstm")  # the GPU fast paths, each on unless NETY_JAX_GPU_FAST_PATHS drops it
GPU_ENV = "NETY_JAX_GPU_FAST_PATHS"


def backend() -> str:
    """The platform a trace now compiles for (``jax.default_backend()``: "cpu", "gpu", "tpu").
    Every fast-path choice reads it here, so a test can force it."""
    return jax.default_backend()


def is_portable() -> bool:
    """Whether the trace now is inside ``portable()`` (an export: XLA's operations only)."""
    return getattr(_portable, "on", False)


def enabled() -> bool:
    """Whether a trace now may call the kernels (decided at trace time)."""
    return not is_portable() and backend() == "cpu" and load()


def gpu_path(name: str) -> bool:
    """Whether a trace now may take the GPU fast path ``name`` (one of ``GPU_PATHS``): on the GPU
    backend, outside ``portable()``, and not turned off by $NETY_JAX_GPU_FAST_PATHS."""
    if name not in GPU_PATHS:
        raise ValueError(f"unknown GPU fast path {name!r}; known: {', '.join(GPU_PATHS)}")
    if is_portable() or backend() != "gpu":
        return False
    setting = os.environ.get(GPU_ENV, "on").strip().lower()
    if setting in ("on", "all", "1", "true", "yes", ""):
        return True
    if setting in ("off", "none", "0", "false", "no"):
        return False
    return name in {part.strip() for part in setting.split(",")}


@contextlib.contextmanager
def portable():
    """Traces inside this block use XLA's operations only (for ``jax.export``).

    Decided at trace time: trace a function of its own here. A second ``jax.jit`` of a function
    already traced outside the block reuses that trace, kernels included (the A/B that once
    dropped the top-k and attention kernels ran them on both sides)."""
    previous = getattr(_portable, "on", False)
    _portable.on = True
    try:
        yield
    finally:
        _portable.on = previous


def _static(*shapes) -> bool:
    """No symbolic dimension (``jax.export`` traces keep XLA's operations)."""
    return all(isinstance(d, int) for shape in shapes for d in shape)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _product(target: str, x: jax.Array, k: int, n: int, *weights: jax.Array) -> jax.Array:
    """(..., K) rows through the product kernel ``target`` (which also takes ``weights``) -> (..., N)
    float32: the leading axes flattened into one of rows and restored after."""
    rows = x.reshape(-1, k)
    call = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct((rows.shape[0], n), jnp.float32),
                            vmap_method="sequential")
    return call(rows, *weights).reshape(x.shape[:-1] + (n,))


# each kernel's module uses the names above (defined before these imports run)
from nety_jax.kernels.attention import decode_attention, decode_attention_usable  # noqa: E402
from nety_jax.kernels.int8 import int8_matmul, int8_usable  # noqa: E402
from nety_jax.kernels.products import (matmul, matmul_packed, matmul_t, matmul_t_usable,  # noqa: E402
                                       matmul_usable, pack_panels, with_packed)
from nety_jax.kernels.topk import top_k  # noqa: E402

__all__ = ["ATTENTION_TARGET", "FLAGS", "GPU_ENV", "GPU_PATHS", "MATMUL_PACKED_TARGET", "MATMUL_ROWS", "MATMUL_TARGET",
           "MATVEC_MIN_WEIGHTS", "MATVEC_ROWS", "MATVEC_TARGET", "MATVEC_T_TARGET", "MAX_ROWS", "PANEL", "SOURCE",
           "TARGET", "TARGETS", "TOP_K_TARGET", "backend", "cache_dir",
           "decode_attention", "decode_attention_usable", "enabled", "gpu_path", "int8_matmul", "int8_usable",
           "is_portable", "load", "matmul", "matmul_packed", "matmul_t", "matmul_t_usable", "matmul_usable",
           "pack_panels", "portable", "top_k", "with_packed"]
