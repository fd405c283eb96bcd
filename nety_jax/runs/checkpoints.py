"""Orbax checkpoints of a run directory: writing, listing, restoring past damage.

Keeps the latest N and the best by validation loss (a PreservationPolicy, so the
newest checkpoint is never deleted in favour of the best one). Orbax writes a
step into a temporary folder and renames it when complete, so a killed save
leaves nothing that looks like a step. Restoring tries the newest step first and
falls back to older ones past damaged ones, each named in a warning.

A checkpoint's ``state`` item is a training state (TrainState: step, params,
mutables, opt_state, rng) or, for runs written by an importer or ``quantize``,
only ``{"params", "mutables"}`` with ``meta["weights_only"]`` set; both restore
for inference through ``restore_variables``.
"""
from __future__ import annotations

import os
import shutil
import time
from typing import Callable, Optional

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from nety_jax.config import Config
from nety_jax.errors import CheckpointError
from nety_jax.runs.files import DAMAGED, checkpoint_dir
from nety_jax.runs.quiet import first_line, one_line_save_errors, quiet_orbax


def make_manager(workdir: str, cfg: Config, read_only: bool = False) -> ocp.CheckpointManager:
    t = cfg.train
    policies = [cm.LatestN(n=t.keep_latest)]
    if t.keep_best > 0:
        policies.append(cm.BestN(get_metric_fn=lambda m: m["val_loss"], reverse=True, n=t.keep_best,
                                 keep_checkpoints_without_metrics=False))
    if not read_only:
        one_line_save_errors()
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
    """Complete steps (Orbax renames a step folder into place only once it is written). A
    ``checkpoints`` that is there but not a folder (a file, a dangling link) is refused: read as
    "no checkpoint", it made ``train`` start again from step 0 and fail at its first save."""
    d = checkpoint_dir(workdir)
    if not os.path.isdir(d):
        check_folder(d)
        return []
    return sorted(int(n) for n in os.listdir(d) if n.isdigit() and os.path.isdir(os.path.join(d, n)))


def check_folder(path: str) -> None:
    """``path``, one of a run's folders (``checkpoints``, ``damaged``), is a folder or absent."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise CheckpointError(f"{path}: is not a directory ({_what_is(path)}); a run's "
                              f"{os.path.basename(path)} must be a folder: move it away")


def _what_is(path: str) -> str:
    if os.path.islink(path):
        return f"a link to {os.readlink(path)!r}" + ("" if os.path.exists(path) else ", which does not exist")
    return "a regular file" if os.path.isfile(path) else "not a regular file or folder"


def latest_step(workdir: str) -> Optional[int]:
    steps = steps_on_disk(workdir)
    return steps[-1] if steps else None


def move_aside(workdir: str, step: int) -> str:
    """Moves a damaged step out of the checkpoint folder (kept for inspection, never deleted)."""
    check_folder(os.path.join(os.path.abspath(workdir), DAMAGED))
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
            failures.append((step, first_line(e)))
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
    """Only ``target``'s leaves of a checkpoint's state (no optimizer state): ``target`` is
    ``{"params": ..., "mutables": {...}}`` of abstract arrays."""
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(item=target, partial_restore=True,
                                     restore_args=ocp.checkpoint_utils.construct_restore_args(target))))
    for path, leaf in jax.tree_util.tree_leaves_with_path(restored.state):
        if isinstance(leaf, jax.ShapeDtypeStruct):  # a partial restore leaves missing leaves abstract
            raise ValueError(f"no {jax.tree_util.keystr(path)} in the checkpoint")
    return restored.state


def abstract_of(tree):
    return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)
