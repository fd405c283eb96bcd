"""Process-wide JAX settings: the persistent compilation cache.

Compiled programs are written to a cache directory and loaded by the next process
that compiles the same program, so a second ``nety-jax train`` / ``generate`` /
``make demo`` (and most of the test suite) skip XLA compilation. The CLI turns it
on by default; ``--no-compile-cache`` or ``NETY_JAX_COMPILE_CACHE=off`` turns it off,
``--compile-cache DIR`` or ``NETY_JAX_COMPILE_CACHE=DIR`` moves it.
"""
from __future__ import annotations

import os
from typing import Optional

ENV = "NETY_JAX_COMPILE_CACHE"


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
