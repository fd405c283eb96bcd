"""A run's model variables without the optimizer: read for inference, written by importers.

``write_weights`` is what ``import-torch``, ``import-hf`` and ``quantize`` write:
``{"params", "mutables"}`` and ``meta["weights_only"]``; ``nety-jax train`` on
such a run starts its optimizer afresh from these weights (training/setup.py).
"""
from __future__ import annotations

import sys
from typing import Callable, Optional

import jax

from nety_jax.config import Config
from nety_jax.errors import CheckpointError
from nety_jax.runs import checkpoints as ckpt
from nety_jax.runs.compat import check_fits
from nety_jax.runs.files import checkpoint_dir, config_path
from nety_jax.runs.quiet import first_line, quiet_orbax


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def split_variables(variables: dict) -> dict:
    """Flax variables -> the checkpoint's ``{"params", "mutables"}``."""
    return {"params": variables["params"], "mutables": {k: v for k, v in variables.items() if k != "params"}}


def write_weights(workdir: str, cfg: Config, variables: dict, step: int = 0, meta: Optional[dict] = None) -> None:
    """One checkpoint of ``variables`` (numpy or jax arrays) at ``step``, written and waited for."""
    manager = ckpt.make_manager(workdir, cfg)
    try:
        ckpt.save(manager, step, split_variables(variables),
                  {"data": {"epoch": 0, "index": 0}, **(meta or {}), "config": cfg.to_dict(), "step": step,
                   "weights_only": True})
        manager.wait_until_finished()
    finally:
        manager.close()


def _restore_step(manager, workdir: str, step: int, restore_one) -> dict:
    if step not in ckpt.steps_on_disk(workdir):
        raise CheckpointError(f"{workdir}: no checkpoint of step {step}")
    try:
        with quiet_orbax():
            return restore_one(step)
    except CheckpointError:
        raise
    except Exception as e:  # Orbax and TensorStore raise many types for damaged files
        raise CheckpointError(f"{checkpoint_dir(workdir)}/{step} is damaged ({first_line(e)})") from None


def restore_inference_variables(workdir: str, cfg: Config, abstract_variables: dict,
                                step: Optional[int] = None,
                                warn: Callable[[str], None] = _stderr) -> tuple[dict, int]:
    """Model variables (params and mutable collections) of the newest intact checkpoint (or
    ``step``), shaped as ``abstract_variables``, without the optimizer state; damaged steps are
    skipped with a warning. Returns (variables, step).

    Each leaf is restored in the sharding its abstract leaf carries (tensor-parallel generation:
    each device reads only its shards), else whole on this process's first device; either way
    from a checkpoint written on any mesh by any number of processes."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None) or device),
        abstract_variables)
    target = split_variables(abstract)
    manager = ckpt.make_manager(workdir, cfg, read_only=True)

    def restore_one(s):
        check_fits(ckpt.restore_meta(manager, s), cfg,
                   f"{checkpoint_dir(workdir)}/{s} (for {config_path(workdir)})")
        return ckpt.restore_variables(manager, s, target)

    try:
        if step is not None:
            state = _restore_step(manager, workdir, step, restore_one)
        else:
            state, step = ckpt.restore_newest(workdir, restore_one, warn)
    finally:
        manager.close()
    if state is None:
        raise CheckpointError(f"{workdir}: no checkpoint found in {checkpoint_dir(workdir)}")
    return {"params": state["params"], **state.get("mutables", {})}, step
