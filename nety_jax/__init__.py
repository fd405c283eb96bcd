"""nety-jax: NETY's hybrid BiLSTM-encoder / Transformer-decoder seq2seq model in JAX/Flax."""
from __future__ import annotations

__version__ = "0.1.0"

# Imported lazily: `nety_jax.export.load_exported` must work without the Flax model code.
_API = {"load_pretrained": "nety_jax.pretrained", "Pretrained": "nety_jax.pretrained",
        "load_config": "nety_jax.config", "Config": "nety_jax.config", "train": "nety_jax.train",
        "load_exported": "nety_jax.export", "HybridSeq2Seq": "nety_jax.model",
        "init_variables": "nety_jax.model", "generate": "nety_jax.generate"}

__all__ = sorted(_API)


def __getattr__(name):
    if name in _API:
        import importlib
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'nety_jax' has no attribute {name!r}")
