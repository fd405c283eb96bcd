"""Checks shared by every config section: each message names ``section.field``.

Values come from YAML or ``--set`` (coerced here to the field's annotated type)
or from Python (checked again by ``validate``): a NaN, an out-of-range number or
a wrong type never gets past a section's ``validate``.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

from nety_jax.errors import ConfigError


def choice(section: str, name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{section}.{name}={value!r} must be one of {', '.join(map(str, choices))}")


def positive(section: str, obj, *names: str, allow_zero: bool = False) -> None:
    for name in names:
        value = getattr(obj, name)
        if not value > 0 and not (allow_zero and value == 0):
            bound = ">= 0" if allow_zero else "> 0"
            raise ConfigError(f"{section}.{name}={value} must be {bound}")


def probability(section: str, obj, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{section}.{name}={value} must be in [0, 1]")


def at_most(section: str, obj, name: str, limit: int, why: str) -> None:
    value = getattr(obj, name)
    if value > limit:
        raise ConfigError(f"{section}.{name}={value} is too large (at most {limit:,}: {why})")


def lm_lengths_fit(max_len: int, cfg) -> None:
    """A language model's windows (``data.seq_len``, ``model.max_len`` when unset) and its
    generation (``decode.max_new_tokens``, after at least one prompt token) fit ``model.max_len``."""
    seq = cfg.data.seq_len or max_len
    if seq > max_len:
        raise ConfigError(f"data.seq_len={seq} must be <= model.max_len={max_len}")
    if cfg.decode.max_new_tokens >= max_len:
        raise ConfigError(f"decode.max_new_tokens={cfg.decode.max_new_tokens} must be < model.max_len={max_len}")


def check_types(section: str, obj) -> None:
    """Every field holds its annotated type and every float is finite."""
    hints = typing.get_type_hints(type(obj))
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if coerce(section, field.name, value, hints[field.name]) != value:
            raise ConfigError(f"{section}.{field.name}={value!r} has the wrong type")


def coerce(section: str, name: str, value: Any, hint) -> Any:
    """A raw YAML / Python value checked against a field's annotated type."""
    where = f"{section}.{name}"
    if typing.get_origin(hint) is typing.Union:  # Optional[X]
        if value is None:
            return None
        hint = [a for a in typing.get_args(hint) if a is not type(None)][0]
    if hint is tuple or typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}={value!r} must be a list")
        return tuple(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}={value!r} must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}={value!r} must be an integer")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}={value!r} must be a number")
        if not math.isfinite(value):
            raise ConfigError(f"{where}={value!r} must be a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}={value!r} must be a string")
        return value
    return value


def build(section: str, cls, body: dict, where: str):
    """A section dataclass from a raw mapping; unknown and mistyped fields are named."""
    if not isinstance(body, dict):
        raise ConfigError(f"{where}: section {section!r} must be a mapping, got {type(body).__name__}")
    fields = {f.name for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in body.items():
        if name not in fields:
            raise ConfigError(f"{where}: unknown field {section}.{name}")
        values[name] = coerce(section, name, value, hints[name])
    return cls(**values)
