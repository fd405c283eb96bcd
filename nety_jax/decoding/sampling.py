"""Choosing the next token from logits, with every row's own settings (runtime arrays).

Order, per row: logits / temperature -> top-k -> top-p inside those k (keep the
smallest prefix of the sorted tokens whose probability reaches p; the most
likely token is always kept) -> sample -> map back to vocabulary ids. A row with
temperature 0 takes the argmax of its raw logits: greedy stays exact.

Top-k is ``lax.top_k`` (our kernel on the CPU: ``nety_jax.kernels``) with a
static width ``top_k_max``; a row asking for more (or for 0: no cut) sends the
batch through a full sort of the vocabulary, the slow path, selected with
``lax.cond`` inside the same compiled program. A row's draw is an inverse-CDF
lookup of ONE uniform number from its own key folded with the step, so it does
not depend on the path, the batch, or the other rows.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from nety_jax import kernels
from nety_jax.decoding.keys import row_keys

NEG_INF = -1e9
Number = Union[int, float]


@struct.dataclass
class SamplingParams:
    """Per-row runtime settings, every field shaped (B,) (keys (B, 2))."""

    temperature: jax.Array  # float32; 0 = greedy
    top_k: jax.Array  # int32; 0 = no cut
    top_p: jax.Array  # float32; 1 = no cut
    max_new_tokens: jax.Array  # int32, <= the compiled maximum
    key: jax.Array  # uint32 (B, 2): each row's own PRNG key

    @classmethod
    def create(cls, batch: int, *, temperature: Union[Number, Sequence[Number]] = 1.0,
               top_k: Union[int, Sequence[int]] = 0, top_p: Union[Number, Sequence[Number]] = 1.0,
               max_new_tokens: Union[int, Sequence[int]] = 1 << 30,
               seed: Union[int, Sequence[int]] = 0, keys: Optional[np.ndarray] = None,
               first_row: int = 0) -> "SamplingParams":
        """Scalars apply to every row, sequences give one value per row. With one seed, row i
        draws from fold_in(PRNGKey(seed), first_row + i); with a sequence, row i from PRNGKey(seed[i])."""
        def rows(value, dtype):
            out = np.broadcast_to(np.asarray(value, dtype), (batch,))
            return np.ascontiguousarray(out)
        if keys is None:
            keys = row_keys(seed, batch, first_row)
        return cls(temperature=rows(temperature, np.float32), top_k=rows(top_k, np.int32),
                   top_p=rows(top_p, np.float32),
                   max_new_tokens=rows(np.minimum(max_new_tokens, np.iinfo(np.int32).max), np.int32),
                   key=np.asarray(keys, np.uint32).reshape(batch, 2))


def nucleus_mask(sorted_logits: jax.Array, top_p: jax.Array) -> jax.Array:
    """True for the tokens kept by top-p, given rows sorted in descending order."""
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # probability mass strictly before each token
    return (before < top_p[:, None]) | (top_p[:, None] >= 1.0)


def _kept(values, top_k, top_p):
    """Sorted candidate logits (B, C) with everything outside top-k and top-p at NEG_INF."""
    rank = jnp.arange(values.shape[-1])[None, :]
    values = jnp.where((top_k[:, None] <= 0) | (rank < top_k[:, None]), values, NEG_INF)
    return jnp.where(nucleus_mask(values, top_p), values, NEG_INF)


def _choose(values, indices, top_k, top_p, uniform, greedy):
    """Sorted candidates (B, C) -> one vocabulary id per row (``greedy`` rows: the first)."""
    values = _kept(values, top_k, top_p)
    probs = jax.nn.softmax(values, axis=-1)
    cum = jnp.cumsum(probs, axis=-1)
    kept = jnp.sum(values > NEG_INF / 2, axis=-1)
    choice = jnp.minimum(jnp.sum(cum < uniform[:, None] * cum[:, -1:], axis=-1), kept - 1)
    choice = jnp.where(greedy, 0, choice)
    return jnp.take_along_axis(indices, choice[:, None], axis=-1)[:, 0]


def _dense(values, indices, top_k, top_p, greedy, vocab: int):
    """Sorted candidates (B, C) -> (B, V) probabilities of drawing each id (greedy rows: all on
    the first candidate)."""
    probs = jax.nn.softmax(_kept(values, top_k, top_p), axis=-1)
    probs = jnp.where(greedy[:, None], jax.nn.one_hot(0, values.shape[-1], dtype=probs.dtype), probs)
    rows = jnp.arange(values.shape[0])[:, None]
    return jnp.zeros((values.shape[0], vocab), probs.dtype).at[rows, indices].set(probs)


def row_uniforms(keys: jax.Array, steps: jax.Array, stream: int = 0) -> jax.Array:
    """(B, 2) keys, (B,) or () steps -> (B,) uniforms: each row's draw for that step. Stream 0 is
    the one ``sample_rows`` uses; other streams are independent draws for the same step."""
    steps = jnp.broadcast_to(steps, keys.shape[:1])

    def one(k, step):
        k = jax.random.fold_in(k, step)
        return jax.random.uniform(k if stream == 0 else jax.random.fold_in(k, stream))
    return jax.vmap(one)(keys, steps)


def _on_candidates(logits, params: SamplingParams, top_k_max: int, fn, first=None):
    """``fn(values, indices, greedy)`` on each row's sorted candidates, scaled by its temperature
    (greedy rows: raw logits): the top ``top_k_max`` ids, or the whole sorted vocabulary when a
    sampled row asks for more. ``first(indices)``, when given, is what ``fn`` gives when every
    row is greedy, from each row's first candidate alone: such a batch sorts no candidates."""
    vocab = logits.shape[-1]
    greedy = (params.temperature <= 0) | (params.top_k == 1)
    # a greedy row keeps its raw logits: the first of its sorted candidates is the argmax
    temperature = jnp.where(greedy, 1.0, params.temperature)[:, None]
    width = min(top_k_max, vocab)

    # Candidates are chosen on the raw logits and only their values scaled: dividing by a positive
    # temperature keeps the order, and the (B, V) pass over the whole vocabulary goes.
    def path(k):
        def draw(x):
            values, indices = kernels.top_k(x, k)
            return fn(values / temperature, indices, greedy)
        return draw

    needs_full = (params.top_k <= 0) | (params.top_k > width)
    logits = logits.astype(jnp.float32)
    branches = [path(vocab)] + ([path(width)] if width < vocab else [])
    index = jnp.where(jnp.any(needs_full & ~greedy), 0, len(branches) - 1)
    if first is not None:  # the first candidate as top_k orders them (ties: the lowest id)
        branches.append(lambda x: first(kernels.top_k(x, 1)[1]))
        index = jnp.where(jnp.all(greedy), len(branches) - 1, index)
    return branches[0](logits) if len(branches) == 1 else jax.lax.switch(index, branches, logits)


def sample_rows(logits: jax.Array, params: SamplingParams, step: jax.Array, top_k_max: int,
                greedy_only: bool = False) -> jax.Array:
    """(B, V) logits -> (B,) int32 ids, each row with its own settings and key (drawn only
    where a row samples: a greedy batch takes its argmax and nothing else). ``greedy_only``:
    the caller knows every row is greedy, so the program holds that argmax alone (the same id:
    the first candidate, the lowest id among equal logits), not the sampler's branches."""
    if greedy_only:
        return kernels.top_k(logits.astype(jnp.float32), 1)[1][:, 0].astype(jnp.int32)
    choose = lambda values, indices, greedy: _choose(values, indices, params.top_k, params.top_p,
                                                     row_uniforms(params.key, step), greedy)
    return _on_candidates(logits, params, top_k_max, choose, lambda indices: indices[:, 0]).astype(jnp.int32)


def probabilities(logits: jax.Array, params: SamplingParams, top_k_max: int) -> jax.Array:
    """(B, V) logits -> (B, V) float32: the distribution ``sample_rows`` draws each row's id
    from (temperature, top-k, top-p applied; greedy rows: one-hot on the argmax)."""
    vocab = logits.shape[-1]
    dense = lambda values, indices, greedy: _dense(values, indices, params.top_k, params.top_p,
                                                   greedy, vocab)
    return _on_candidates(logits, params, top_k_max, dense)


def draw_from(probs: jax.Array, uniform: jax.Array) -> jax.Array:
    """(B, V) probabilities (not necessarily normalised), (B,) uniforms -> (B,) int32 ids by an
    inverse-CDF lookup; never an id of probability 0."""
    cum = jnp.cumsum(probs, axis=-1)
    last = probs.shape[-1] - 1 - jnp.argmax(probs[:, ::-1] > 0, axis=-1)
    return jnp.minimum(jnp.sum(cum < uniform[:, None] * cum[:, -1:], axis=-1), last).astype(jnp.int32)


def ban_repeated_ngrams(logits: jax.Array, tokens: jax.Array, pos: jax.Array, n: int) -> jax.Array:
    """Forbids any token that would repeat an n-gram already in ``tokens[:, :pos]``.

    tokens: (B, L) generated so far, ``pos`` of them written (the next goes at ``pos``).
    """
    b, length = tokens.shape
    if n <= 0 or length < n:
        return logits
    starts = jnp.arange(length - n + 1)  # candidate n-gram starts j: tokens[j .. j+n-1]
    tail = jax.lax.dynamic_slice_in_dim(tokens, jnp.maximum(pos - (n - 1), 0), n - 1, axis=1) \
        if n > 1 else tokens[:, :0]
    match = jnp.ones((b, starts.shape[0]), bool)
    for i in range(n - 1):
        match &= tokens[:, starts + i] == tail[:, i:i + 1]
    # the n-gram must lie entirely in the written prefix and the tail must be complete
    match &= (starts + n - 1 < pos)[None, :] & (pos >= n - 1)
    banned_tokens = tokens[:, starts + n - 1]
    banned = jnp.zeros(logits.shape, bool).at[jnp.arange(b)[:, None], banned_tokens].max(match)
    return jnp.where(banned, NEG_INF, logits)
