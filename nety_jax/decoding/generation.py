"""Generation for any model: prefill once, then ONE while_loop (sampling) or beam search.

``generate`` is a pure function of (variables, prompt arrays, per-row sampling
arrays); the model adapter and the static ``LoopSpec`` are static arguments, so a
change of temperature, top-k, top-p, seed or a smaller max_new_tokens never
recompiles. ``generate_jit`` is the compiled entry point used in-process.
"""
from __future__ import annotations

import functools

import jax

from nety_jax.decoding.beam import beam_search
from nety_jax.decoding.loop import run, sample_loop, start
from nety_jax.decoding.spec import LoopSpec
from nety_jax.decoding.sampling import SamplingParams


def _callbacks(model, variables, tokens, lengths, spec: LoopSpec):
    first, cache = model.start_decoding(variables, tokens, lengths, spec.max_new_tokens)

    def step(last, cache):
        return model.decode_step(variables, last, cache)
    return first, cache, step


def generate(variables, tokens, lengths, params: SamplingParams, *, model, spec: LoopSpec) -> dict:
    """Continuations of a batch of prompts: ``{"tokens" (B, N), "lengths" (B,), "scores" (B,)}``.

    ``tokens`` (B, S) right-padded prompt ids (sources for seq2seq models) and their
    ``lengths`` (B,). ``scores`` is the sum of log-probabilities (beam search:
    length-normalised). ``params`` is ignored by beam search (deterministic).
    """
    first, cache, step = _callbacks(model, variables, tokens, lengths, spec)
    if spec.beam_size > 1:
        return beam_search(step, first, cache, spec)
    return sample_loop(step, first, cache, params, spec)


generate_jit = jax.jit(generate, static_argnames=("model", "spec"))


@functools.partial(jax.jit, static_argnames=("model", "spec"))
def start_stream(variables, tokens, lengths, params: SamplingParams, *, model, spec: LoopSpec):
    """Streaming, part 1: prefill and the first token. Returns the loop state."""
    first, cache, _ = _callbacks(model, variables, tokens, lengths, spec)
    return start(first, cache, params, spec)


@functools.partial(jax.jit, static_argnames=("model", "spec"), donate_argnums=(1,))
def continue_stream(variables, state, until, *, model, spec: LoopSpec):
    """Streaming, part 2: runs the same loop until ``until`` tokens (or every row is done)."""
    def step(last, cache):
        return model.decode_step(variables, last, cache)
    return run(step, state, spec, until)
