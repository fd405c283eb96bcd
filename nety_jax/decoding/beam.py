"""Beam search in one ``lax.while_loop`` with a length penalty ((5 + len) / 6) ** alpha.

Shapes (B batch, K beams, N new tokens): live and finished sequences (B, K, N);
the cache is tiled to B * K rows (every cache leaf has the batch first, per-row
positions included) and reordered by the surviving beams' origins at every step.
The first expansion uses the prefill logits, before the loop.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from nety_jax.config.sections import EOS_ID, PAD_ID
from nety_jax.decoding.loop import Step
from nety_jax.decoding.spec import LoopSpec

NEG = -1.0e9


@struct.dataclass
class BeamState:
    pos: jax.Array  # () tokens written so far
    live_seqs: jax.Array  # (B, K, N)
    live_scores: jax.Array  # (B, K) summed log-probabilities
    fin_seqs: jax.Array  # (B, K, N)
    fin_scores: jax.Array  # (B, K) length-normalised scores, NEG where empty
    fin_flags: jax.Array  # (B, K) bool
    cache: Any


def length_penalty(length, alpha: float):
    return ((5.0 + length) / 6.0) ** alpha


def _gather_beams(x, idx):
    """x: (B, K', ...), idx: (B, K) -> (B, K, ...)."""
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def _tile(tree, k):
    return jax.tree_util.tree_map(lambda x: jnp.repeat(x, k, axis=0) if x.ndim else x, tree)


def _reorder_cache(cache, origin, b, k):
    flat = (jnp.arange(b)[:, None] * k + origin).reshape(-1)
    return jax.tree_util.tree_map(lambda x: x[flat] if x.ndim else x, cache)


def _expand(s: BeamState, logits, cache, spec: LoopSpec, b: int, k: int) -> BeamState:
    """Extends every live beam by every token and keeps the best K live and K finished."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(b, k, -1)
    vocab = logp.shape[-1]
    if spec.min_new_tokens > 0:
        logp = jnp.where((s.pos < spec.min_new_tokens) & (jnp.arange(vocab) == EOS_ID), NEG, logp)
    if spec.ignore_eos:
        logp = logp.at[:, :, EOS_ID].set(NEG)
    cand = (s.live_scores[:, :, None] + logp).reshape(b, k * vocab)
    scores2, idx2 = jax.lax.top_k(cand, 2 * k)
    origin2, tok2 = idx2 // vocab, (idx2 % vocab).astype(jnp.int32)
    seqs2 = jax.lax.dynamic_update_slice_in_dim(_gather_beams(s.live_seqs, origin2), tok2[:, :, None],
                                                s.pos, axis=2)
    is_eos = tok2 == EOS_ID

    live_scores, live_idx = jax.lax.top_k(jnp.where(is_eos, NEG, scores2), k)
    origin = jnp.take_along_axis(origin2, live_idx, axis=1)

    fin_cand = jnp.where(is_eos, scores2 / length_penalty(s.pos + 1, spec.length_penalty), NEG)
    all_scores = jnp.concatenate([s.fin_scores, fin_cand], axis=1)
    all_seqs = jnp.concatenate([s.fin_seqs, seqs2], axis=1)
    all_flags = jnp.concatenate([s.fin_flags, is_eos], axis=1)
    fin_scores, fin_idx = jax.lax.top_k(all_scores, k)
    return BeamState(pos=s.pos + 1, live_seqs=_gather_beams(seqs2, live_idx), live_scores=live_scores,
                     fin_seqs=_gather_beams(all_seqs, fin_idx), fin_scores=fin_scores,
                     fin_flags=jnp.take_along_axis(all_flags, fin_idx, axis=1),
                     cache=_reorder_cache(cache, origin, b, k))


def beam_search(step: Step, first_logits, cache, spec: LoopSpec) -> dict:
    """``{"tokens" (B, N), "lengths" (B,), "scores" (B,)}`` of every row's best hypothesis, and
    ``beam_tokens`` (B, K, N), ``beam_lengths`` and ``beam_scores`` (B, K): its K best, best first."""
    b, k, n = first_logits.shape[0], spec.beam_size, spec.max_new_tokens
    alpha = spec.length_penalty
    seqs = jnp.full((b, k, n), PAD_ID, jnp.int32)
    state = BeamState(pos=jnp.zeros((), jnp.int32), live_seqs=seqs,
                      live_scores=jnp.tile(jnp.asarray([0.0] + [NEG] * (k - 1)), (b, 1)),
                      fin_seqs=seqs, fin_scores=jnp.full((b, k), NEG), fin_flags=jnp.zeros((b, k), bool),
                      cache=None)
    cache = _tile(cache, k)
    state = _expand(state, _tile(first_logits, k), cache, spec, b, k)

    def cond(s: BeamState):
        if spec.ignore_eos:
            return s.pos < n
        # stop when no live beam can still beat the worst finished one (best case: full length)
        best_live = s.live_scores[:, 0] / length_penalty(n, alpha)
        worst_fin = jnp.where(jnp.all(s.fin_flags, axis=1), jnp.min(s.fin_scores, axis=1), NEG)
        return (s.pos < n) & jnp.any(best_live > worst_fin)

    def body(s: BeamState):
        last = jax.lax.dynamic_index_in_dim(s.live_seqs, s.pos - 1, axis=2, keepdims=False)
        logits, cache = step(last.reshape(b * k), s.cache)
        return _expand(s, logits, cache, spec, b, k)

    final = jax.lax.while_loop(cond, body, state)
    beams, scores = _ranked(final, alpha)
    lengths = _lengths(beams, final.pos)
    return {"tokens": beams[:, 0], "lengths": lengths[:, 0], "scores": scores[:, 0],
            "beam_tokens": beams, "beam_lengths": lengths, "beam_scores": scores}


def _ranked(final: BeamState, alpha: float):
    """The K best hypotheses of every row, best first: the finished ones by score, then (where
    fewer than K finished) the live ones, scored as if they ended at the last position. The
    first is what beam search returns; the rest are the N-best list (``num_samples``)."""
    live_norm = final.live_scores / length_penalty(final.pos, alpha)
    seqs = jnp.concatenate([final.fin_seqs, final.live_seqs], axis=1)
    scores = jnp.concatenate([final.fin_scores, live_norm], axis=1)
    k = final.fin_flags.shape[1]
    group = jnp.concatenate([jnp.where(final.fin_flags, 0, 2), jnp.ones_like(final.fin_flags, jnp.int32)], axis=1)
    order = jnp.lexsort((-scores, group), axis=-1)[:, :k]
    return _gather_beams(seqs, order), jnp.take_along_axis(scores, order, axis=1)


def _lengths(seqs, pos):
    """(..., N) sequences -> tokens up to and including the first <eos>, else ``pos``."""
    is_eos = seqs == EOS_ID
    return jnp.where(jnp.any(is_eos, axis=-1), jnp.argmax(is_eos, axis=-1) + 1, pos).astype(jnp.int32)
