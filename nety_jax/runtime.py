"""Process-wide settings: JAX's persistent compilation cache and the host memory allocator.

Compiled programs are written to a cache directory and loaded by the next process
that compiles the same program, so a second ``nety-jax train`` / ``generate`` /
``make demo`` (and most of the test suite) skip XLA compilation. The CLI turns it
on by default; ``--no-compile-cache`` or ``NETY_JAX_COMPILE_CACHE=off`` turns it off,
``--compile-cache DIR`` or ``NETY_JAX_COMPILE_CACHE=DIR`` moves it.

``keep_host_memory()`` stops glibc's malloc from handing large freed blocks back to the
kernel: XLA on the CPU allocates each execution's temporaries (hundreds of MB for a train
step) and frees them after it, and by default glibc returns them (``munmap`` or a heap
trim), so the next execution page-faults every page in again (docs/PERFORMANCE.md counts them
per NETY-size train step). On jax 0.11+ part of them are YNNPACK's, allocated on XLA's
worker threads, so there every thread shares malloc's main arena too. Every ``nety-jax``
command turns it on before JAX starts; ``NETY_JAX_HOST_MALLOC=default`` leaves glibc alone,
``NETY_JAX_HOST_MALLOC=keep-arenas`` keeps freed memory without the one arena.
See docs/PERFORMANCE.md.
Both settings are for JAX's CPU backend only: ``cpu_settings_apply()`` decides, before
JAX starts, whether this process will run on it, and on any other backend (a GPU, or
an installed accelerator plugin that JAX would pick) they stay off.
"""
from __future__ import annotations

import os
import sys
from typing import Optional

ENV = "NETY_JAX_COMPILE_CACHE"
MALLOC_ENV = "NETY_JAX_HOST_MALLOC"
MALLOC_MODES = ("keep", "keep-arenas", "default")
# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "nety-jax", "jax")


def enable_compilation_cache(path: Optional[str] = None, min_compile_seconds: float = 0.2) -> Optional[str]:
    """Turns JAX's persistent compilation cache on (``path``: a directory, ``"off"``, or None for
    $NETY_JAX_COMPILE_CACHE or the user cache dir). Returns the directory used, or None."""
    import warnings

    import jax
    # the cache only saves time: a full or read-only disk must not fill the terminal with warnings
    warnings.filterwarnings("ignore", message=".*persistent compilation cache.*")
    path = path or os.environ.get(ENV) or default_cache_dir()
    if path.lower() in ("off", "0", "false", "none"):
        jax.config.update("jax_compilation_cache_dir", None)
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None  # an unwritable cache only costs compile time
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def _accelerator_plugins() -> list[str]:
    """Installed JAX plugins for accelerators (CUDA, ROCm, TPU): JAX picks one over the CPU
    whenever it finds its device."""
    import importlib.metadata
    import importlib.util
    found = []
    if importlib.util.find_spec("jax_plugins") is not None:
        import pkgutil
        import jax_plugins
        found += [m.name for m in pkgutil.iter_modules(jax_plugins.__path__)]
    found += [ep.name for ep in importlib.metadata.entry_points(group="jax_plugins")]
    if importlib.util.find_spec("libtpu") is not None:
        found.append("libtpu")
    return found


def cpu_settings_apply() -> bool:
    """Whether this process's JAX will run on its CPU backend (read before JAX starts):
    $JAX_PLATFORMS's first platform when set, else the CPU unless an accelerator plugin is
    installed. CPU-only settings (``keep_host_memory``) apply only then."""
    platforms = os.environ.get("JAX_PLATFORMS") or os.environ.get("JAX_PLATFORM_NAME") or ""
    if platforms.strip():
        return platforms.split(",")[0].strip().lower() == "cpu"
    return not _accelerator_plugins()


def workers_allocate_temporaries() -> bool:
    """Whether XLA:CPU allocates run-time temporaries on its worker threads (jaxlib 0.11+, read
    without starting JAX): it fuses elementwise producers into its YNNPACK dot fusions, and
    YNNPACK allocates their intermediates at every run, on whichever thread runs the fusion
    (XLA's thunk executor goes on with the next operation on the worker that finished the last
    one); jaxlib 0.10 kept such values in XLA's own buffers, allocated by the calling thread."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        major_minor = tuple(int(p) for p in version("jaxlib").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return True  # unknown: assume the newer runtime
    return major_minor >= (0, 11)


def keep_host_memory(mode: Optional[str] = None) -> bool:
    """Makes glibc's malloc keep XLA's freed temporaries for reuse (``mode``: ``"keep"``,
    ``"keep-arenas"`` (the same without one arena for every thread), ``"default"``, or None for
    $NETY_JAX_HOST_MALLOC, default ``"keep"``). Returns True when applied; a no-op off
    Linux/glibc and off JAX's CPU backend (``cpu_settings_apply``).

    Single-device CPU programs run in the thread that calls them (JAX's
    ``jax_cpu_enable_async_dispatch`` off), so the temporaries XLA allocates per execution come
    from malloc's main arena, and two ``mallopt`` settings keep them there: no mmap for large
    blocks, no trimming of the heap's top. Another thread's arena cannot hold a block over 64 MB
    and always maps it afresh, so where XLA allocates temporaries on its worker threads
    (``workers_allocate_temporaries``: jax 0.11+) every thread shares the main arena as well
    (``M_ARENA_MAX=1``; on jax 0.10 it removes no fault and slowed parallel compilation, so it is
    not set there).
    Resident memory stays at its peak instead of shrinking after each step. Call it before JAX
    runs anything: the dispatch mode is fixed when JAX creates its CPU client, and a thread keeps
    the arena its first allocation got."""
    mode = (mode or os.environ.get(MALLOC_ENV) or "keep").lower()
    if mode not in MALLOC_MODES:
        from nety_jax.errors import ConfigError
        raise ConfigError(f"{MALLOC_ENV} must be one of {', '.join(map(repr, MALLOC_MODES))}, got {mode!r}")
    if mode == "default" or not sys.platform.startswith("linux") or not cpu_settings_apply():
        return False
    import ctypes
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only: musl's mallopt does nothing
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    # glibc reads the trim threshold as a size_t: -1 is "never"; 2**31 - 1, the largest positive
    # int, still trims a heap whose top holds more than that of a large step's temporaries
    settings = [(_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)]
    if mode == "keep" and workers_allocate_temporaries():
        settings.append((_M_ARENA_MAX, 1))
    if not all(mallopt(param, value) == 1 for param, value in settings):
        return False
    import jax
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    return True
