"""Generation for any model: prefill once, then ONE while_loop (sampling) or beam search.

``generate`` is a pure function of (variables, prompt arrays, per-row sampling
arrays); the model adapter and the static ``LoopSpec`` are static arguments, so a
change of temperature, top-k, top-p, seed or a smaller max_new_tokens never
recompiles. ``generate_jit`` is the compiled entry point used in-process.
"""
from __future__ import annotations

import functools

import jax

from nety_jax import kernels
from nety_jax.decoding import loop, speculative
from nety_jax.decoding.beam import beam_search
from nety_jax.decoding.spec import LoopSpec
from nety_jax.decoding.sampling import SamplingParams


PACK_MIN_TOKENS = 8  # the fewest new tokens for which generation packs the weights (kernels.with_packed)


def _callbacks(model, variables, tokens, lengths, spec: LoopSpec):
    first, cache = model.start_decoding(variables, tokens, lengths, spec.max_new_tokens)
    if spec.speculative:  # a verification writes a whole draft past a row's last position
        cache = model.draft_room(cache, spec.draft_tokens + 1)

    # the weights' panels packed once here, outside the loop, for every step's batched products
    # (a call of a few steps does not repay the copy)
    packed = variables if spec.max_new_tokens < PACK_MIN_TOKENS else kernels.with_packed(
        variables, tokens.shape[0] * max(spec.beam_size, 1))

    def step(last, cache):
        return model.decode_step(packed, last, cache)
    return first, cache, step


def _verify_callbacks(model, variables):
    """``decode_steps`` / ``keep_steps`` as the speculative loop calls them."""
    return (lambda fed, cache: model.decode_steps(variables, fed, cache)), model.keep_steps


def generate(variables, tokens, lengths, params: SamplingParams, *, model, spec: LoopSpec) -> dict:
    """Continuations of a batch of prompts: ``{"tokens" (B, N), "lengths" (B,), "scores" (B,)}``.

    ``tokens`` (B, S) right-padded prompt ids (sources for seq2seq models) and their
    ``lengths`` (B,). ``scores`` is the sum of log-probabilities (beam search:
    length-normalised). ``params`` is ignored by beam search (deterministic).
    """
    first, cache, step = _callbacks(model, variables, tokens, lengths, spec)
    if spec.beam_size > 1:
        return beam_search(step, first, cache, spec)
    if spec.speculative:
        return speculative.speculative_loop(*_verify_callbacks(model, variables), first, cache, tokens,
                                            lengths, params, spec, step)
    return loop.sample_loop(step, first, cache, params, spec)


generate_jit = jax.jit(generate, static_argnames=("model", "spec"))


@functools.partial(jax.jit, static_argnames=("model", "spec"))
def start_stream(variables, tokens, lengths, params: SamplingParams, *, model, spec: LoopSpec):
    """Streaming, part 1: prefill and the first token. Returns the loop state."""
    first, cache, _ = _callbacks(model, variables, tokens, lengths, spec)
    if spec.speculative:
        return speculative.start(first, cache, tokens, lengths, params, spec)
    return loop.start(first, cache, params, spec)


@functools.partial(jax.jit, static_argnames=("model", "spec"))
def start_stream_from(variables, states, tokens, lengths, params: SamplingParams, prompt, prompt_lengths, *,
                      model, spec: LoopSpec):
    """``start_stream`` from reused prompt states (``model.start_from_states``): ``tokens`` are
    what follows each row's state ("prefix" reuse) or the whole prompts ("whole"); ``prompt``
    and ``prompt_lengths`` are the whole prompts (where speculation looks up its drafts)."""
    first, cache = model.start_from_states(variables, states, tokens, lengths, spec.max_new_tokens)
    if spec.speculative:
        cache = model.draft_room(cache, spec.draft_tokens + 1)
        return speculative.start(first, cache, prompt, prompt_lengths, params, spec)
    return loop.start(first, cache, params, spec)


@functools.partial(jax.jit, static_argnames=("model", "spec"), donate_argnums=(1,))
def continue_stream(variables, state, until, *, model, spec: LoopSpec):
    """Streaming, part 2: runs the same loop until ``until`` tokens (or every row is done)."""
    def step(last, cache):
        return model.decode_step(variables, last, cache)
    if spec.speculative:
        return speculative.run(*_verify_callbacks(model, variables), state, spec, until, step)
    return loop.run(step, state, spec, until)


def stream_result(state, spec: LoopSpec) -> dict:
    """``{"tokens", "lengths", "scores"}`` of a streaming state so far."""
    return (speculative.result if spec.speculative else loop.result)(state, spec)


def stream_tokens(state, spec: LoopSpec):
    """(B, N) ids a streaming state has generated so far, pad after each row's last."""
    return speculative.reply(state, spec) if spec.speculative else state.tokens
