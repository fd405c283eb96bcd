"""Lazy package attributes: a subpackage's names are imported on first use, so importing a
light module (a config, the prompt policy) never pulls Flax in."""
from __future__ import annotations

import importlib


def lazy_getattr(package: str, names: dict):
    def __getattr__(name):
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return __getattr__
