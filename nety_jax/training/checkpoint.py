"""Run directories and Orbax checkpoints.

A run directory holds::

    config.yaml          the resolved config (rebuilds the model)
    tokenizer.json (+ tokenizer.model or vocab.json)
    checkpoints/<step>/  state (TrainState arrays) + meta (JSON: data position, config)
    metrics.jsonl, events.out.tfevents.*, loss.png
    damaged/<step>/      checkpoints that failed to restore, moved aside (never deleted)

Keeps the latest N and the best by validation loss (a PreservationPolicy, so the
newest checkpoint is never deleted in favour of the best one). Orbax writes a
step into a temporary folder and renames it when complete, so a killed save
leaves nothing that looks like a step. Restoring tries the newest step first and
falls back to older ones past damaged ones, each named in a warning.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from typing import Callable, Optional

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from nety_jax import config as config_lib
from nety_jax.config import Config
from nety_jax.errors import CheckpointError

CONFIG_FILE = "config.yaml"
DAMAGED = "damaged"


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def _is_restore_noise(exc) -> bool:
    """After a failed restore, TensorStore callbacks still reach Orbax's closed event loop."""
    text = f"{type(exc).__name__}: {exc}"
    return "Event loop is closed" in text or "_read_array_index" in text


def _install_noise_filters() -> None:
    """Drops the 'Event loop is closed' tracebacks a failed restore leaves behind (printed from
    background threads, possibly after the restore returned); everything else is untouched."""
    import sys
    import threading
    if getattr(sys, "_nety_noise_filters", False):
        return
    unraisable, thread_hook, except_hook = sys.unraisablehook, threading.excepthook, sys.excepthook

    def on_unraisable(info):
        if not (_is_restore_noise(info.exc_value) or "_read_array_index" in repr(info.object)):
            unraisable(info)

    def on_thread(args):
        if not _is_restore_noise(args.exc_value):
            thread_hook(args)

    def on_except(kind, value, tb):
        if not _is_restore_noise(value):
            except_hook(kind, value, tb)
    sys.unraisablehook, threading.excepthook, sys.excepthook = on_unraisable, on_thread, on_except
    sys._nety_noise_filters = True


@contextlib.contextmanager
def quiet_orbax():
    """Orbax logs routine notices and the errors of a failed restore (with tracebacks) through
    absl; a failed restore is reported once, as one line, by the caller."""
    _install_noise_filters()
    loggers = [logging.getLogger(n) for n in ("absl", "orbax", "jax._src.distributed", "asyncio")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def make_manager(workdir: str, cfg: Config, read_only: bool = False) -> ocp.CheckpointManager:
    t = cfg.train
    policies = [cm.LatestN(n=t.keep_latest)]
    if t.keep_best > 0:
        policies.append(cm.BestN(get_metric_fn=lambda m: m["val_loss"], reverse=True, n=t.keep_best,
                                 keep_checkpoints_without_metrics=False))
    with quiet_orbax():
        options = ocp.CheckpointManagerOptions(
            preservation_policy=cm.AnyPreservationPolicy(policies), create=not read_only,
            read_only=read_only, enable_async_checkpointing=not read_only)
        try:
            return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                                         item_names=("state", "meta"))
        except OSError as e:
            raise CheckpointError(f"{checkpoint_dir(workdir)}: cannot use this checkpoint folder "
                                  f"({e.strerror or e})") from None


def save(manager: ocp.CheckpointManager, step: int, state, meta: dict,
         val_loss: Optional[float] = None) -> bool:
    metrics = {"val_loss": float(val_loss)} if val_loss is not None else None
    with quiet_orbax():
        return manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                          meta=ocp.args.JsonSave(meta)),
                            metrics=metrics, force=True)


def steps_on_disk(workdir: str) -> list[int]:
    """Complete steps (Orbax renames a step folder into place only once it is written)."""
    d = checkpoint_dir(workdir)
    if not os.path.isdir(d):
        return []
    return sorted(int(n) for n in os.listdir(d) if n.isdigit() and os.path.isdir(os.path.join(d, n)))


def latest_step(workdir: str) -> Optional[int]:
    steps = steps_on_disk(workdir)
    return steps[-1] if steps else None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


def move_aside(workdir: str, step: int) -> str:
    """Moves a damaged step out of the checkpoint folder (kept for inspection, never deleted)."""
    target = os.path.join(os.path.abspath(workdir), DAMAGED, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.move(os.path.join(checkpoint_dir(workdir), str(step)), target)
    return target


def restore_newest(workdir: str, restore_one: Callable[[int], object], warn: Callable[[str], None],
                   move_damaged: bool = False):
    """``restore_one(step)`` on the newest step that restores. Damaged steps are named in a warning;
    with ``move_damaged`` (training goes on and will write those step numbers again) they are moved
    to ``damaged/`` once an older intact step is found, never deleted. Returns (result, step), or
    (None, None) when there is no checkpoint at all; no intact step is a ``CheckpointError``."""
    steps = steps_on_disk(workdir)
    if not steps:
        return None, None
    failures = []
    for step in reversed(steps):
        try:
            with quiet_orbax():
                result = restore_one(step)
        except CheckpointError:
            raise  # the checkpoint is fine, the request does not fit it
        except Exception as e:  # Orbax and TensorStore raise many types for damaged files
            failures.append((step, _first_line(e)))
            continue
        for bad, why in failures:
            where = f"; moved to {move_aside(workdir, bad)}" if move_damaged else ""
            warn(f"warning: checkpoint {checkpoint_dir(workdir)}/{bad} is damaged ({why}){where}; "
                 f"using step {step}")
        return result, step
    raise CheckpointError(f"{checkpoint_dir(workdir)}: no intact checkpoint (damaged: "
                          f"{', '.join(f'{s} ({why[:120]})' for s, why in failures)})")


def restore_state(manager: ocp.CheckpointManager, step: int, abstract_state):
    """TrainState and meta of ``step``, into the structure (and shardings) of ``abstract_state``."""
    out = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return out.state, out.meta


def restore_meta(manager: ocp.CheckpointManager, step: int) -> dict:
    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta


def restore_variables(manager: ocp.CheckpointManager, step: int, target: dict) -> dict:
    """Only the model variables of a TrainState checkpoint (no optimizer state)."""
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(item=target, partial_restore=True,
                                     restore_args=ocp.checkpoint_utils.construct_restore_args(target))))
    for path, leaf in jax.tree_util.tree_leaves_with_path(restored.state):
        if isinstance(leaf, jax.ShapeDtypeStruct):  # a partial restore leaves missing leaves abstract
            raise ValueError(f"no {jax.tree_util.keystr(path)} in the checkpoint")
    return restored.state


def check_fits(meta: dict, cfg: Config, where: str) -> None:
    """A checkpoint written by another model config is named field by field (before any array is
    read, so a shape mismatch is never mistaken for damage)."""
    diffs = model_differences(meta.get("config", {}), cfg.to_dict())
    if diffs:
        raise CheckpointError(f"{where} was written by another model config: {describe_differences(diffs)}")


def abstract_of(tree):
    return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)


def read_run_config(workdir: str) -> Config:
    if not os.path.isdir(workdir):
        raise CheckpointError(f"{workdir}: no such run directory")
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"{workdir}: not a nety-jax run directory (no {CONFIG_FILE})")
    return config_lib.load_config(path)


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
