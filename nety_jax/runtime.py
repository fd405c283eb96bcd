"""Process-wide settings: JAX's persistent compilation cache and the host memory allocator.

Compiled programs are written to a cache directory and loaded by the next process
that compiles the same program, so a second ``nety-jax train`` / ``generate`` /
``make demo`` (and most of the test suite) skip XLA compilation. The CLI turns it
on by default; ``--no-compile-cache`` or ``NETY_JAX_COMPILE_CACHE=off`` turns it off,
``--compile-cache DIR`` or ``NETY_JAX_COMPILE_CACHE=DIR`` moves it.

The host allocator: on the CPU, XLA allocates each execution's temporaries (hundreds of MB for
a NETY-size train step) and frees them after it; glibc's malloc hands such blocks back to the
kernel, so the next step page-faults every 4 KB page in again (136,000 faults, about 0.1 s, a
step). glibc's ``glibc.malloc.hugetlb=1`` tunable backs them with transparent huge pages (2 MB:
a few hundred faults a step). glibc reads tunables only when a process starts, so the
``nety-jax`` command re-executes itself once with ``GLIBC_TUNABLES`` extended
(``restart_with_host_malloc``); ``NETY_JAX_HOST_MALLOC=default`` leaves glibc alone. Python API
users start their process with ``host_malloc_env()``'s environment. See docs/PERFORMANCE.md.
"""
from __future__ import annotations

import os
import sys
from typing import Optional

ENV = "NETY_JAX_COMPILE_CACHE"
MALLOC_ENV = "NETY_JAX_HOST_MALLOC"
HUGEPAGES = "glibc.malloc.hugetlb=1"


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



def host_malloc_env(environ: Optional[dict] = None) -> Optional[dict]:
    """The environment to start a process with so that glibc's malloc backs large blocks with
    transparent huge pages: ``environ`` (default ``os.environ``) with ``glibc.malloc.hugetlb=1``
    added to ``GLIBC_TUNABLES``, or None when nothing is to change ($NETY_JAX_HOST_MALLOC is
    ``default``, not Linux, or the tunable is already set). glibc older than 2.35 ignores it."""
    env = dict(os.environ if environ is None else environ)
    mode = (env.get(MALLOC_ENV) or "hugepages").lower()
    if mode not in ("hugepages", "default"):
        from nety_jax.errors import ConfigError
        raise ConfigError(f"{MALLOC_ENV} must be 'hugepages' or 'default', got {mode!r}")
    tunables = env.get("GLIBC_TUNABLES", "")
    if mode == "default" or not sys.platform.startswith("linux") or "glibc.malloc.hugetlb" in tunables:
        return None
    env["GLIBC_TUNABLES"] = f"{tunables}:{HUGEPAGES}" if tunables else HUGEPAGES
    return env


def restart_with_host_malloc(args: list) -> None:
    """Re-executes this Python with ``args`` (e.g. ``["-m", "nety_jax.cli", ...]``) in
    ``host_malloc_env()``'s environment when that changes anything; returns otherwise. The new
    process keeps the PID, standard streams and signals; it finds the tunable set and goes on."""
    env = host_malloc_env()
    if env is None or not sys.executable:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *args], env)
