"""Run directories and Orbax checkpoints.

A run directory holds::

    config.yaml          the resolved config (rebuilds the model)
    tokenizer.json (+ tokenizer.model or vocab.json)
    checkpoints/<step>/  state (TrainState arrays) + meta (JSON: data position, metrics)
    metrics.jsonl, events.out.tfevents.*, loss.png

Keeps the latest N and the best by validation loss (PreservationPolicy, so the
newest checkpoint is never deleted in favour of the best one).
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Optional

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from nety_jax import config as config_lib
from nety_jax.config import Config
from nety_jax.errors import CheckpointError

CONFIG_FILE = "config.yaml"


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


@contextlib.contextmanager
def quiet_orbax():
    """Orbax logs routine notices (read-only managers, ...) as absl warnings: hide them."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def make_manager(workdir: str, cfg: Config, read_only: bool = False) -> ocp.CheckpointManager:
    t = cfg.train
    policies = [cm.LatestN(n=t.keep_latest)]
    if t.keep_best > 0:
        policies.append(cm.BestN(get_metric_fn=lambda m: m["val_loss"], reverse=True, n=t.keep_best,
                                 keep_checkpoints_without_metrics=False))
    with quiet_orbax():
        options = ocp.CheckpointManagerOptions(
            preservation_policy=cm.AnyPreservationPolicy(policies), create=not read_only,
            read_only=read_only, enable_async_checkpointing=True)
        return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                                     item_names=("state", "meta"))


def save(manager: ocp.CheckpointManager, step: int, state, meta: dict,
         val_loss: Optional[float] = None, force: bool = False) -> bool:
    metrics = {"val_loss": float(val_loss)} if val_loss is not None else None
    return manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                      meta=ocp.args.JsonSave(meta)),
                        metrics=metrics, force=force)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state):
    """Restores into the structure (and shardings) of ``abstract_state``."""
    try:
        out = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    except (ValueError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{manager.directory}/{step}: does not fit this config ({first[:300]})") \
            from None
    return out.state, out.meta


def abstract_of(tree):
    return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)


def read_run_config(workdir: str) -> Config:
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"{workdir}: not a nety-jax run directory (no {CONFIG_FILE})")
    return config_lib.load_config(path)


def latest_step(workdir: str) -> Optional[int]:
    d = checkpoint_dir(workdir)
    if not os.path.isdir(d):
        return None
    steps = [int(n) for n in os.listdir(d) if n.isdigit()]
    return max(steps) if steps else None


def model_differences(a: Config, b: Config) -> list[str]:
    """Fields of the model section that differ (those that change the parameters)."""
    da, db = a.to_dict()["model"], b.to_dict()["model"]
    ignore = {"dropout", "attention_dropout", "dtype", "bn_axis_name"}
    return [f"model.{k}: saved {da[k]!r}, requested {db[k]!r}"
            for k in da if k not in ignore and da[k] != db[k]]
