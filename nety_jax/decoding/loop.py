"""The sampling loop: ONE ``lax.while_loop`` over a struct state, rows finishing on their own.

The loop knows nothing of models: it takes the first logits of a prefill and a
``step(tokens (B,), cache) -> (logits (B, V), cache)`` callback, so tests drive it
with fake logits. The first token is chosen from the prefill logits before the
loop; each iteration then runs the model on the last token and chooses the
next. ``run`` can stop after any number of tokens and be called again on its
result (streaming in chunks): the tokens are the same as one uninterrupted run.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from nety_jax.config.sections import EOS_ID, PAD_ID
from nety_jax.decoding.sampling import NEG_INF, SamplingParams, ban_repeated_ngrams, sample_rows
from nety_jax.decoding.spec import LoopSpec

Step = Callable[[jax.Array, Any], tuple[jax.Array, Any]]


@struct.dataclass
class SampleState:
    tokens: jax.Array  # (B, N) int32: generated ids, pad after <eos>
    cache: Any  # the model's cache (or whatever step threads through)
    pos: jax.Array  # () int32: tokens generated so far (the next goes at tokens[:, pos])
    done: jax.Array  # (B,) bool: the row has finished
    logprob: jax.Array  # (B,) float32: sum of the model's log-probabilities of the chosen tokens
    params: SamplingParams


def adjust_logits(logits, tokens, pos, spec: LoopSpec):
    """Constraints that apply before choosing: min length and no-repeat n-grams."""
    if spec.min_new_tokens > 0:  # pos: () or one per row (B,)
        early = jnp.reshape(pos < spec.min_new_tokens, (-1, 1))
        logits = jnp.where(early & (jnp.arange(logits.shape[-1]) == EOS_ID), NEG_INF, logits)
    if spec.no_repeat_ngram > 0:
        logits = ban_repeated_ngrams(logits, tokens, pos, spec.no_repeat_ngram)
    return logits


def chosen_log_prob(logits, ids):
    """(B, V) logits, (B,) ids -> (B,) log-softmax at those ids, the same float operations as
    ``jax.nn.log_softmax`` but without writing the whole (B, V) result."""
    top = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    total = jnp.log(jnp.sum(jnp.exp(logits - top), axis=-1))
    return (jnp.take_along_axis(logits, ids[:, None], axis=1) - top)[:, 0] - total


def _emit(s: SampleState, logits, spec: LoopSpec) -> SampleState:
    """Chooses, writes and scores the token at ``s.pos`` for every row."""
    logits = adjust_logits(logits.astype(jnp.float32), s.tokens, s.pos, spec)
    nxt = sample_rows(logits, s.params, s.pos, spec.top_k_max, spec.greedy_only)
    logp = chosen_log_prob(logits, nxt)
    nxt = jnp.where(s.done, PAD_ID, nxt)
    count = s.pos + 1
    done = s.done | (count >= s.params.max_new_tokens)
    if not spec.ignore_eos:
        done = done | (nxt == EOS_ID)
    return s.replace(tokens=jax.lax.dynamic_update_slice_in_dim(s.tokens, nxt[:, None], s.pos, 1),
                     pos=count, done=done, logprob=s.logprob + jnp.where(s.done, 0.0, logp))


def start(first_logits, cache, params: SamplingParams, spec: LoopSpec) -> SampleState:
    """The state after the first token, chosen from the prefill logits."""
    b = first_logits.shape[0]
    state = SampleState(tokens=jnp.full((b, spec.max_new_tokens), PAD_ID, jnp.int32), cache=cache,
                        pos=jnp.zeros((), jnp.int32), done=params.max_new_tokens <= 0,
                        logprob=jnp.zeros((b,), jnp.float32), params=params)
    return _emit(state, first_logits, spec)


def run(step: Step, state: SampleState, spec: LoopSpec, until=None) -> SampleState:
    """Continues until every row is done, or ``until`` tokens (the compiled maximum by default)."""
    limit = spec.max_new_tokens if until is None else jnp.minimum(until, spec.max_new_tokens)

    def cond(s: SampleState):
        return (s.pos < limit) & ~jnp.all(s.done)

    def body(s: SampleState):
        last = jax.lax.dynamic_index_in_dim(s.tokens, s.pos - 1, axis=1, keepdims=False)
        logits, cache = step(last, s.cache)
        return _emit(s.replace(cache=cache), logits, spec)

    return jax.lax.while_loop(cond, body, state)


def finish(tokens: jax.Array, generated: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(B, N) ids of which ``generated`` (B,) were written -> (ids with pad after the first
    <eos>, lengths including the <eos>)."""
    is_eos = tokens == EOS_ID
    after = jnp.cumsum(is_eos, axis=1) - is_eos > 0
    first = jnp.argmax(is_eos, axis=1)
    lengths = jnp.where(jnp.any(is_eos, axis=1), first + 1, generated)
    return jnp.where(after, PAD_ID, tokens), lengths.astype(jnp.int32)


def result(state: SampleState, spec: LoopSpec) -> dict:
    generated = jnp.minimum(jnp.maximum(state.params.max_new_tokens, 0), state.pos)
    if spec.ignore_eos:
        tokens, lengths = state.tokens, generated.astype(jnp.int32)
    else:
        tokens, lengths = finish(state.tokens, generated)
    return {"tokens": tokens, "lengths": lengths, "scores": state.logprob}


def sample_loop(step: Step, first_logits, cache, params: SamplingParams, spec: LoopSpec) -> dict:
    """Temperature / top-k / top-p sampling (greedy rows at temperature 0), all in one loop."""
    return result(run(step, start(first_logits, cache, params, spec), spec), spec)
