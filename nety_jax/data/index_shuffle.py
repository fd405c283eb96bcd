"""A keyed pseudorandom permutation of ``[0, n)`` evaluated position by position.

``index_shuffle(positions, n, keys)`` is the element at each position of a shuffled
``range(n)`` without building the shuffle: a Feistel network over the smallest even number of
bits that holds ``n`` (a bijection of ``[0, 4**half)``), walked again from any value ``>= n``
until it lands inside (cycle walking: a bijection of ``[0, n)``, fewer than 4 walks on average
since the domain is under ``4 * n``). Grain's ``index_shuffle`` is the same construction; ours
is NumPy over arrays of positions, with a 64-bit mixing round function, and fully specified
here (a library update cannot change an epoch's order under a resumed run).

Not for cryptography: for data order only.
"""
from __future__ import annotations

import numpy as np

ROUNDS = 6  # Luby-Rackoff: 4 make a pseudorandom permutation; 2 more for the small domains

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer: a bijection of uint64 whose every output bit depends on every input bit."""
    z = np.asarray(z, np.uint64)
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


def keys_of(*words: int, count: int = ROUNDS) -> np.ndarray:
    """``count`` uint64 keys derived from non-negative integers (a seed, an epoch, a stream):
    NumPy's ``SeedSequence``, whose output is fixed across NumPy versions."""
    return np.random.SeedSequence([int(w) for w in words]).generate_state(count, np.uint64)


def _feistel(x: np.ndarray, half: int, keys: np.ndarray) -> np.ndarray:
    """One pass of the network over ``2 * half``-bit values (a bijection of ``[0, 4**half)``)."""
    shift, mask = np.uint64(half), np.uint64((1 << half) - 1)
    left, right = x >> shift, x & mask
    for key in keys:
        left, right = right, left ^ (mix64(right ^ key) & mask)
    return (left << shift) | right


def index_shuffle(positions, n: int, keys: np.ndarray) -> np.ndarray:
    """(k,) int64: the shuffled ``range(n)``'s elements at ``positions`` (each in ``[0, n)``).

    For one ``keys`` (``keys_of(...)``), distinct positions give distinct elements, and all
    ``n`` positions give every element of ``[0, n)`` once. O(1) work and memory per position."""
    x = np.asarray(positions, np.uint64).copy()
    if n <= 1:
        return np.zeros(x.shape, np.int64)
    half = max(1, ((n - 1).bit_length() + 1) // 2)
    out = _feistel(x, half, keys)
    walking = np.flatnonzero(out >= np.uint64(n))
    while len(walking):
        out[walking] = _feistel(out[walking], half, keys)
        walking = walking[out[walking] >= np.uint64(n)]
    return out.astype(np.int64)


def shuffled_range(n: int, key: np.uint64) -> np.ndarray:
    """(n,) int64, a permutation of ``range(n)`` drawn whole: for the small ranges (a window's
    batches) where a Feistel network over a few bits would reach too few of the orders."""
    return np.argsort(mix64(np.arange(n, dtype=np.uint64) ^ np.uint64(key)), kind="stable").astype(np.int64)
