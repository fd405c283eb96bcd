"""Choosing the next token from logits: greedy, temperature, top-k, top-p.

Order: logits / temperature -> top-k (``lax.top_k``, static k) -> top-p inside
those k (keep the smallest prefix of the sorted tokens whose cumulative
probability reaches p; the most likely token is always kept) -> sample from the
renormalised remainder -> map back to vocabulary ids. ``top_k=0`` sorts the
whole vocabulary (slow path). Temperature 0 or top-k 1 is greedy (argmax).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from nety_jax.layers import NEG_INF


def nucleus_mask(sorted_logits: jax.Array, top_p: float) -> jax.Array:
    """True for the tokens kept by top-p, given logits sorted in descending order."""
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # probability mass strictly before each token
    return before < top_p


def sample_next(logits: jax.Array, rng: jax.Array, *, temperature: float, top_k: int,
                top_p: float) -> jax.Array:
    """(B, V) logits -> (B,) token ids."""
    if temperature == 0.0 or top_k == 1:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    k = top_k if 0 < top_k < logits.shape[-1] else logits.shape[-1]
    values, indices = jax.lax.top_k(logits, k)  # sorted, descending
    if top_p < 1.0:
        values = jnp.where(nucleus_mask(values, top_p), values, NEG_INF)
    choice = jax.random.categorical(rng, values, axis=-1)
    return jnp.take_along_axis(indices, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)


def ban_repeated_ngrams(logits: jax.Array, tokens: jax.Array, pos: jax.Array, n: int) -> jax.Array:
    """Forbids any token that would repeat an n-gram already in ``tokens[:, :pos + 1]``.

    tokens: (B, L) with the last written token at index ``pos``.
    """
    b, length = tokens.shape
    if n <= 0 or length < n:
        return logits
    starts = jnp.arange(length - n + 1)  # candidate n-gram starts j: tokens[j .. j+n-1]
    tail = jax.lax.dynamic_slice_in_dim(tokens, jnp.maximum(pos - (n - 2), 0), n - 1, axis=1) \
        if n > 1 else tokens[:, :0]
    match = jnp.ones((b, starts.shape[0]), bool)
    for i in range(n - 1):
        match &= tokens[:, starts + i] == tail[:, i:i + 1]
    # the n-gram must lie entirely in the written prefix and the tail must be complete
    match &= (starts + n - 1 <= pos)[None, :] & (pos >= n - 2)
    banned_tokens = tokens[:, starts + n - 1]
    banned = jnp.zeros(logits.shape, bool).at[jnp.arange(b)[:, None], banned_tokens].max(match)
    return jnp.where(banned, NEG_INF, logits)
