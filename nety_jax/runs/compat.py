"""Whether a checkpoint fits a config: the ``model.*`` fields that shape the parameters."""
from __future__ import annotations

from nety_jax.config import Config
from nety_jax.errors import CheckpointError

# fields that do not change the parameters or their meaning
RUNTIME_MODEL_FIELDS = {"dropout", "attention_dropout", "dtype"}


def model_differences(saved: dict, requested: dict) -> list[str]:
    """``model.*`` fields (those that shape the parameters) that differ between two config dicts."""
    a, b = saved.get("model", {}), requested.get("model", {})
    # a field one side lacks was added later: its default is what the older side meant
    keys = [k for k in a if k in b and k not in RUNTIME_MODEL_FIELDS]
    return [f"model.{k}: checkpoint {a.get(k)!r}, requested {b.get(k)!r}"
            for k in keys if a.get(k) != b.get(k)]


def describe_differences(diffs: list[str]) -> str:
    more = f" (and {len(diffs) - 1} more: {'; '.join(diffs[1:4])})" if len(diffs) > 1 else ""
    return diffs[0] + more


def check_fits(meta: dict, cfg: Config, where: str) -> None:
    """A checkpoint written by another model config is named field by field (before any array is
    read, so a shape mismatch is never mistaken for damage)."""
    diffs = model_differences(meta.get("config", {}), cfg.to_dict())
    if diffs:
        raise CheckpointError(f"{where} was written by another model config: {describe_differences(diffs)}")
