"""Decoding for every model: per-row sampling settings, the while_loop, beam search."""
from nety_jax._lazy import lazy_getattr

_NAMES = {"generate": "nety_jax.decoding.generation", "generate_jit": "nety_jax.decoding.generation",
          "start_stream": "nety_jax.decoding.generation", "continue_stream": "nety_jax.decoding.generation",
          "start_stream_from": "nety_jax.decoding.generation",
          "LoopSpec": "nety_jax.decoding.spec", "SamplingParams": "nety_jax.decoding.sampling",
          "sample_rows": "nety_jax.decoding.sampling", "sample_loop": "nety_jax.decoding.loop",
          "beam_search": "nety_jax.decoding.beam"}
__all__ = sorted(_NAMES)
__getattr__ = lazy_getattr(__name__, _NAMES)
