"""Generation: encode once, build the KV cache once, then ONE ``lax.while_loop``.

The loop functions take a ``tokens_to_logits(tokens (B, 1), cache) -> (logits (B, V), cache)``
callback, so tests can drive them with fake logits; ``generate`` wires in the model.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from nety_jax.beam import beam_search
from nety_jax.config import EOS_ID, PAD_ID, SOS_ID, DecodeConfig, ModelConfig
from nety_jax.layers import NEG_INF
from nety_jax.model import HybridSeq2Seq
from nety_jax.sampling import ban_repeated_ngrams, sample_next

TokensToLogits = Callable[[jax.Array, Any], tuple[jax.Array, Any]]


@struct.dataclass
class SampleState:
    tokens: jax.Array  # (B, N + 1) int32: <sos>, then generated ids, pad after <eos>
    cache: Any  # the decoder's KV cache (or whatever tokens_to_logits threads through)
    pos: jax.Array  # () int32: index in ``tokens`` of the last token written
    done: jax.Array  # (B,) bool: the row has produced <eos>
    rng: jax.Array  # PRNG key, split at every step
    logprob: jax.Array  # (B,) float32: sum of the model's log-probabilities of the chosen tokens


def adjust_logits(logits, tokens, pos, dcfg: DecodeConfig):
    """Constraints that apply before choosing: min length and no-repeat n-grams."""
    if dcfg.min_new_tokens > 0:
        logits = jnp.where((pos < dcfg.min_new_tokens) & (jnp.arange(logits.shape[-1]) == EOS_ID),
                           NEG_INF, logits)
    if dcfg.no_repeat_ngram > 0:
        logits = ban_repeated_ngrams(logits, tokens, pos, dcfg.no_repeat_ngram)
    return logits


def finish(tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(B, N) generated ids -> (ids with pad after the first <eos>, lengths incl. <eos>)."""
    is_eos = tokens == EOS_ID
    after = jnp.cumsum(is_eos, axis=1) - is_eos > 0
    tokens = jnp.where(after, PAD_ID, tokens)
    n = tokens.shape[1]
    first = jnp.argmax(is_eos, axis=1)
    lengths = jnp.where(jnp.any(is_eos, axis=1), first + 1, n)
    return tokens, lengths.astype(jnp.int32)


def sample_loop(tokens_to_logits: TokensToLogits, cache, batch_size: int, rng: jax.Array,
                dcfg: DecodeConfig) -> dict:
    """Temperature / top-k / top-p sampling (greedy at temperature 0) in one while_loop."""
    n = dcfg.max_new_tokens
    tokens = jnp.full((batch_size, n + 1), PAD_ID, jnp.int32).at[:, 0].set(SOS_ID)
    state = SampleState(tokens=tokens, cache=cache, pos=jnp.zeros((), jnp.int32),
                        done=jnp.zeros((batch_size,), bool), rng=rng,
                        logprob=jnp.zeros((batch_size,), jnp.float32))

    def cond(s: SampleState):
        return (s.pos < n) & ~jnp.all(s.done)

    def body(s: SampleState):
        last = jax.lax.dynamic_slice_in_dim(s.tokens, s.pos, 1, axis=1)
        logits, cache = tokens_to_logits(last, s.cache)
        logits = adjust_logits(logits.astype(jnp.float32), s.tokens, s.pos, dcfg)
        rng, key = jax.random.split(s.rng)
        nxt = sample_next(logits, key, temperature=dcfg.temperature, top_k=dcfg.top_k,
                          top_p=dcfg.top_p)
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits), nxt[:, None], axis=1)[:, 0]
        nxt = jnp.where(s.done, PAD_ID, nxt)
        done = s.done | ((nxt == EOS_ID) & (not dcfg.ignore_eos))
        return SampleState(tokens=jax.lax.dynamic_update_slice_in_dim(s.tokens, nxt[:, None], s.pos + 1, 1),
                           cache=cache, pos=s.pos + 1, done=done, rng=rng,
                           logprob=s.logprob + jnp.where(s.done, 0.0, logp))

    final = jax.lax.while_loop(cond, body, state)
    out = final.tokens[:, 1:]
    if dcfg.ignore_eos:
        lengths = jnp.full((batch_size,), n, jnp.int32)
    else:
        out, lengths = finish(out)
    return {"tokens": out, "lengths": lengths, "scores": final.logprob}


def _model_callbacks(variables, src_ids, src_lengths, cfg: ModelConfig, max_len: int):
    model = HybridSeq2Seq(cfg)
    memory, mask = model.apply(variables, src_ids, src_lengths, method=model.encode)
    cache = model.apply(variables, memory, mask, max_len, method=model.init_cache)

    def tokens_to_logits(tokens, cache):
        logits, cache = model.apply(variables, tokens, cache, method=model.decode_step)
        return logits[:, -1], cache
    return tokens_to_logits, cache


def generate(variables, src_ids, src_lengths, rng, *, cfg: ModelConfig, dcfg: DecodeConfig) -> dict:
    """Replies for a batch of sources: ``{"tokens" (B, N), "lengths" (B,), "scores" (B,)}``.

    ``scores`` is the sum of log-probabilities (beam search: length-normalised).
    """
    tokens_to_logits, cache = _model_callbacks(variables, src_ids, src_lengths, cfg,
                                               dcfg.max_new_tokens + 1)
    if dcfg.beam_size > 1:
        return beam_search(tokens_to_logits, cache, src_ids.shape[0], dcfg)
    return sample_loop(tokens_to_logits, cache, src_ids.shape[0], rng, dcfg)


generate_jit = jax.jit(generate, static_argnames=("cfg", "dcfg"))


@functools.partial(jax.jit, static_argnames=("cfg", "dcfg"))
def _uncached_step(variables, src_ids, src_lengths, buffer, t, key, *, cfg, dcfg):
    model = HybridSeq2Seq(cfg)
    memory, mask = model.apply(variables, src_ids, src_lengths, method=model.encode)
    logits = model.apply(variables, buffer, memory, mask, method=model.decode)
    logits = jax.lax.dynamic_index_in_dim(logits, t, axis=1, keepdims=False)
    return sample_next(logits, key, temperature=dcfg.temperature, top_k=dcfg.top_k, top_p=dcfg.top_p)


def generate_uncached(variables, src_ids, src_lengths, *, cfg: ModelConfig, dcfg: DecodeConfig,
                      rng=None, steps: int | None = None) -> np.ndarray:
    """NETY's way, as a reference: a Python loop that reruns encoder and decoder on the whole
    prefix every step (no cache).

    The prefix lives in a fixed (B, N + 1) buffer so one compiled forward serves all
    steps (the causal mask hides the unwritten tail). Returns (B, N) generated ids;
    ``steps`` stops early (to compile without running the whole loop).
    """
    n = dcfg.max_new_tokens
    b = src_ids.shape[0]
    buffer = jnp.full((b, n + 1), PAD_ID, jnp.int32).at[:, 0].set(SOS_ID)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    done = np.zeros(b, bool)
    for t in range(n if steps is None else min(steps, n)):
        rng, key = jax.random.split(rng)
        nxt = np.asarray(_uncached_step(variables, src_ids, src_lengths, buffer, t, key,
                                        cfg=cfg, dcfg=dcfg))
        nxt = np.where(done, PAD_ID, nxt)
        buffer = buffer.at[:, t + 1].set(nxt)
        if not dcfg.ignore_eos:
            done |= nxt == EOS_ID
            if done.all():
                break
    return np.asarray(buffer[:, 1:])
