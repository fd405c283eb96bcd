"""Float32 products for decoding: ``matmul`` (x @ w: ``nety_matmul`` for a batched decode step's
``MATMUL_ROWS`` rows, ``nety_matvec`` for up to ``MATVEC_ROWS``), ``matmul_t`` (x @ w.T, a tied
output head: ``nety_matvec_t``), both differentiated as XLA's product; and ``matmul_packed``,
``nety_matmul``'s product over the weights' panels packed contiguous (``pack_panels``), which
``with_packed`` makes once per ``generate`` call."""
from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from nety_jax import kernels as _kernels  # its _cores and _state, read at call time (tests replace _cores)
from nety_jax.kernels import (MATMUL_PACKED_TARGET, MATMUL_ROWS, MATMUL_TARGET, MATVEC_MIN_WEIGHTS, MATVEC_ROWS,
                              MATVEC_T_TARGET, MATVEC_TARGET, PANEL, _product, _static, enabled)


def matmul_usable(x: jax.Array, dtype, features: int) -> bool:
    """Whether ``Linear`` should compute its float32 product with ``matmul`` (x @ a (K, ``features``)
    kernel): a few rows (up to ``MATVEC_ROWS``: ``nety_matvec``, weights of ``MATVEC_MIN_WEIGHTS``
    or more), or ``MATMUL_ROWS`` rows with at least one block of 8 rows per
    core (``nety_matmul`` splits rows over threads; on a machine with more cores than that,
    XLA's GEMM, which can use them all, keeps the product)."""
    if not (jnp.dtype(dtype) == jnp.float32 and x.dtype == jnp.float32 and _static(x.shape)):
        return False
    rows = math.prod(x.shape[:-1])
    if 1 <= rows <= MATVEC_ROWS:
        return x.shape[-1] * features >= MATVEC_MIN_WEIGHTS and enabled()
    return (MATMUL_ROWS[0] <= rows <= MATMUL_ROWS[1] and -(-rows // 8) >= _kernels._cores() and enabled()
            and _kernels._state.get("matmul", False))


def _matmul_call(x: jax.Array, kernel: jax.Array) -> jax.Array:
    k, n = kernel.shape
    target = MATVEC_TARGET if math.prod(x.shape[:-1]) <= MATVEC_ROWS else MATMUL_TARGET
    return _product(target, x, k, n, kernel)


@jax.custom_vjp
def matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """(..., K) float32 @ (K, N) float32 -> (..., N) through nety_matmul. Its gradient is XLA's
    (the kernel has none of its own), so a training batch of that many rows may take it too."""
    return _matmul_call(x, kernel)


def _matmul_fwd(x, kernel):
    return _matmul_call(x, kernel), (x, kernel)


def _matmul_bwd(saved, g):
    x, kernel = saved
    rows, grads = x.reshape(-1, kernel.shape[0]), g.reshape(-1, kernel.shape[1])
    return jnp.dot(g, kernel.T), jnp.dot(rows.T, grads)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def _matmul_t_call(x: jax.Array, table: jax.Array) -> jax.Array:
    n, k = table.shape
    return _product(MATVEC_T_TARGET, x, k, n, table)


def matmul_t_usable(x: jax.Array, table: jax.Array) -> bool:
    """Whether ``matmul_t`` computes x @ table.T: float32, up to ``MATVEC_ROWS`` rows, a table of
    ``MATVEC_MIN_WEIGHTS`` or more, on the CPU."""
    return (x.dtype == jnp.float32 and table.dtype == jnp.float32 and _static(x.shape, table.shape)
            and 1 <= math.prod(x.shape[:-1]) <= MATVEC_ROWS and table.size >= MATVEC_MIN_WEIGHTS
            and enabled())


@jax.custom_vjp
def matmul_t(x: jax.Array, table: jax.Array) -> jax.Array:
    """(..., K) float32 @ (N, K).T -> (..., N) through nety_matvec_t (``matmul_t_usable`` rows);
    differentiated as XLA's product."""
    return _matmul_t_call(x, table)


def _matmul_t_fwd(x, table):
    return _matmul_t_call(x, table), (x, table)


def _matmul_t_bwd(saved, g):
    x, table = saved
    rows, grads = x.reshape(-1, table.shape[1]), g.reshape(-1, table.shape[0])
    return jnp.dot(g, table), jnp.dot(grads.T, rows)


matmul_t.defvjp(_matmul_t_fwd, _matmul_t_bwd)


def pack_panels(kernel: jax.Array) -> jax.Array:
    """(K, N) -> (N // PANEL, K, PANEL): column panel p of ``kernel`` with its K rows contiguous
    (the columns past the last full panel are left out: ``matmul_packed`` reads them from the
    kernel itself)."""
    k, n = kernel.shape
    panels = n // PANEL
    return kernel[:, :panels * PANEL].reshape(k, panels, PANEL).transpose(1, 0, 2)


def matmul_packed(x: jax.Array, packed: jax.Array, kernel: jax.Array) -> jax.Array:
    """(..., K) float32 @ (K, N) ``kernel`` -> (..., N), with ``packed = pack_panels(kernel)``:
    the same floats as ``matmul`` (its kernel's panels read contiguous). Not differentiable: a
    decoding path (``with_packed``)."""
    k, n = kernel.shape
    return _product(MATMUL_PACKED_TARGET, x, k, n, packed, kernel)


def _packable(leaf, rows: int) -> bool:
    """Whether a float32 (K, N) kernel would go through ``nety_matmul`` for ``rows`` rows."""
    shape = getattr(leaf, "shape", ())
    return (len(shape) == 2 and getattr(leaf, "dtype", None) == jnp.float32 and shape[1] >= PANEL
            and matmul_usable(jax.ShapeDtypeStruct((rows, shape[0]), jnp.float32), jnp.float32, shape[1])
            and rows > MATVEC_ROWS)


def with_packed(variables: dict, rows: int) -> dict:
    """``variables`` plus a ``packed`` collection: ``pack_panels`` of every float32 ``kernel``
    in ``params`` that a product of ``rows`` rows sends through ``nety_matmul`` (``Linear``
    then calls ``matmul_packed``); ``variables`` unchanged when none does. Call it inside the
    jitted program, before a decode loop: the packed copies are made once per call (and cost
    the kernels' size in memory while it runs)."""
    def walk(tree):
        out = {}
        for name, value in tree.items():
            if isinstance(value, Mapping):
                sub = walk(value)
                if sub:
                    out[name] = sub
            elif name == "kernel" and _packable(value, rows):
                out[name] = pack_panels(value)
        return out
    if "packed" in variables or not isinstance(variables.get("params"), Mapping):
        return variables
    packed = walk(variables["params"])
    return {**variables, "packed": packed} if packed else variables
