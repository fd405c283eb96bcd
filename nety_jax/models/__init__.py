"""Architectures behind one protocol (``base.Model``), picked by ``model.arch``.

``get_model(cfg.model)`` returns the adapter; nothing outside this package names an
architecture.
"""
from nety_jax.models.registry import ARCHITECTURES, config_class, get_model

__all__ = ["ARCHITECTURES", "config_class", "get_model"]
