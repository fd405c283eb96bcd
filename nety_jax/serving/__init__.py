"""Serving: loading runs, exported artifacts, chat, the HTTP server, int8 quantization."""
from nety_jax._lazy import lazy_getattr

_NAMES = {"load_pretrained": "nety_jax.serving.pretrained", "Pretrained": "nety_jax.serving.pretrained",
          "export_run": "nety_jax.serving.export", "load_exported": "nety_jax.serving.export",
          "ExportedModel": "nety_jax.serving.export", "chat": "nety_jax.serving.chat",
          "InferenceModel": "nety_jax.serving.protocol"}
__all__ = sorted(_NAMES)
__getattr__ = lazy_getattr(__name__, _NAMES)
