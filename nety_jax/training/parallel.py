"""The only device-aware module: compiles the pure steps and places data and state.

Backends (``train.parallel``):
- ``none``: ``jax.jit`` on one device, the state donated.
- ``pmap``: ``jax.pmap(axis_name='batch')`` over the local devices; the state is
  passed with ``in_axes=None`` (replicated, never stacked) and comes back with
  ``out_axes=None``; gradients, metrics and BatchNorm statistics are psum-/pmean-ed.
- ``shard_map``: ``jax.jit(jax.shard_map(...))`` over a 1-D mesh named 'batch', the
  state replicated (``P()``), the batch split (``P('batch')``). pmap is in
  maintenance mode upstream; this is the same program on the newer API.
Multi-host: ``jax.distributed.initialize()`` when JAX_COORDINATOR_ADDRESS is set;
each process feeds its own contiguous slice of every global batch.
"""
from __future__ import annotations

import functools
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nety_jax.config import Config
from nety_jax.errors import ConfigError
from nety_jax.training.steps import eval_step, train_step

AXIS = "batch"


def maybe_initialize_distributed() -> None:
    """Joins a multi-host job when the usual coordinator environment is set."""
    if os.environ.get("JAX_COORDINATOR_ADDRESS") and jax.process_count() == 1:
        jax.distributed.initialize()


class Runner:
    """Compiled ``train(state, batch)`` and ``evaluate(state, batch)`` for one backend."""

    def __init__(self, cfg: Config, model, backend: str | None = None):
        self.backend = backend or cfg.train.parallel
        self.num_devices = 1 if self.backend == "none" else jax.local_device_count()
        per_process = cfg.train.batch_size // jax.process_count()
        if cfg.train.batch_size % jax.process_count() or \
                per_process % (self.num_devices * cfg.train.grad_accum):
            raise ConfigError(
                f"train.batch_size={cfg.train.batch_size} must be divisible by processes x devices x "
                f"train.grad_accum = {jax.process_count()} x {self.num_devices} x {cfg.train.grad_accum}")
        common = {"model": model, "tcfg": cfg.train}
        if self.backend == "none":
            self._train = jax.jit(functools.partial(train_step, **common), donate_argnums=0)
            self._eval = jax.jit(functools.partial(eval_step, **common))
            return
        step = functools.partial(train_step, **common, axis_name=AXIS)
        evaluate = functools.partial(eval_step, **common, axis_name=AXIS)
        if self.backend == "pmap":
            self._train = jax.pmap(step, axis_name=AXIS, in_axes=(None, 0), out_axes=(None, None))
            self._eval = jax.pmap(evaluate, axis_name=AXIS, in_axes=(None, 0), out_axes=None)
        elif self.backend == "shard_map":
            self.mesh = Mesh(np.asarray(jax.devices()), (AXIS,))
            wrap = lambda fn, out: jax.shard_map(fn, mesh=self.mesh, in_specs=(P(), P(AXIS)),
                                                 out_specs=out)
            self._train = jax.jit(wrap(step, (P(), P())), donate_argnums=0)
            self._eval = jax.jit(wrap(evaluate, P()))
        else:
            raise ConfigError(f"train.parallel={self.backend!r} must be one of none, pmap, shard_map")

    # -- placement -------------------------------------------------------------
    def place_state(self, state):
        if self.backend == "shard_map":
            return jax.device_put(state, NamedSharding(self.mesh, P()))
        return state

    def host_slice(self, batch: dict) -> dict:
        """This process's contiguous share of a global batch."""
        n, i = jax.process_count(), jax.process_index()
        if n == 1:
            return batch
        return {k: v[i * (len(v) // n): (i + 1) * (len(v) // n)] for k, v in batch.items()}

    def place_batch(self, batch: dict) -> dict:
        batch = self.host_slice(batch)
        if self.backend == "pmap":
            d = self.num_devices
            return {k: v.reshape((d, v.shape[0] // d) + v.shape[1:]) for k, v in batch.items()}
        if self.backend == "shard_map":
            sharding = NamedSharding(self.mesh, P(AXIS))
            return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
        return batch

    # -- steps -----------------------------------------------------------------
    def train(self, state, batch: dict):
        return self._train(state, self.place_batch(batch))

    def evaluate(self, state, batch: dict) -> dict:
        return self._eval(state, self.place_batch(batch))
