"""The only device-aware module: compiles the pure steps and places data and state.

Backends (``train.parallel``):
- ``none``: ``jax.jit`` on one device, the state donated.
- ``pmap``: ``jax.pmap(axis_name='batch')`` over the local devices; the state is
  passed with ``in_axes=None`` (replicated, never stacked) and comes back with
  ``out_axes=None``; gradients, metrics and BatchNorm statistics are psum-/pmean-ed.
- ``shard_map``: ``jax.jit(jax.shard_map(...))`` over a 1-D mesh named 'batch', the
  state replicated (``P()``), the batch split (``P('batch')``). pmap is in
  maintenance mode upstream; this is the same program on the newer API.
- ``mesh``: ``jax.jit`` with shardings on the named mesh ('data', 'fsdp', 'tensor')
  of ``training/mesh.py``: parameters and optimizer state sharded by their logical
  axis names (FSDP, tensor parallelism), the batch split over ('data', 'fsdp').
  With ``train.mesh_data=-1`` and fsdp = tensor = 1 it is data parallelism like
  ``shard_map`` (no explicit collectives: XLA partitions the plain step); ``none``
  is the mesh of one device. The three older backends stay as they are (tested,
  and the explicit-collective form is a reference for the partitioned one).
Multi-host (``shard_map``, ``mesh``): every process runs the same command with
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID set;
``jax.distributed.initialize`` joins them (gloo collectives on CPU), the mesh
spans every process's devices and each process feeds its own contiguous slice of
every global batch. Replicated results are read from the process's own copy.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import types

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nety_jax.config import Config
from nety_jax.data.batching import LocalBatch
from nety_jax.errors import ConfigError
from nety_jax.layers.remat import Remat
from nety_jax.training import mesh as meshlib
from nety_jax.training.steps import create_train_state, eval_step, trace_settings, train_step

AXIS = "batch"


def maybe_initialize_distributed() -> None:
    """Joins a multi-host job when JAX_COORDINATOR_ADDRESS (and JAX_NUM_PROCESSES,
    JAX_PROCESS_ID) are set. Must run before any JAX computation."""
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not address or jax.distributed.is_initialized():
        return
    try:
        count, index = int(os.environ["JAX_NUM_PROCESSES"]), int(os.environ["JAX_PROCESS_ID"])
    except (KeyError, ValueError):
        raise ConfigError("JAX_COORDINATOR_ADDRESS is set: JAX_NUM_PROCESSES and JAX_PROCESS_ID must be "
                          "integers too (one command per host, process ids 0..N-1)") from None
    if os.environ.get("JAX_PLATFORMS", "cpu").startswith("cpu") or not os.environ.get("JAX_PLATFORMS"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        # jax 0.12.1: a multi-process CPU program read back from the persistent compilation
        # cache hangs in its first gloo all-reduce (every process waiting; compiled afresh it
        # runs), so such a job compiles its programs itself
        jax.config.update("jax_enable_compilation_cache", False)
    jax.distributed.initialize(coordinator_address=address, num_processes=count, process_id=index)


def is_primary() -> bool:
    """Process 0 writes the run directory's shared files (config, tokenizer, metrics)."""
    return jax.process_index() == 0


def local(tree):
    """This process's whole copy of (possibly multi-process) arrays: its own replica of a
    replicated array; a sharded one is gathered from every process (all must call)."""
    def one(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return x
        if x.sharding.is_fully_replicated:
            return x.addressable_data(0)
        from jax.experimental import multihost_utils
        return multihost_utils.process_allgather(x, tiled=True)
    return jax.tree_util.tree_map(one, tree)


def _on_mesh(x, sharding):
    if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim):
        return x
    return _place(jax.device_get(local(x)), sharding)


def _place(value, sharding):
    """A host value as a global array with ``sharding`` (each process fills its own shards)."""
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])


def check_layout(cfg: Config, backend: str | None = None) -> None:
    """The device layout's one-line errors (the backend for this many processes, the batch split
    over devices and ``train.grad_accum``, the mesh's shape and rules), from the config and the
    devices alone: ``train`` calls it before reading data or training a tokenizer, which a bad
    ``--parallel`` / ``train.mesh_*`` setting would otherwise wait for."""
    t, backend = cfg.train, backend or cfg.train.parallel
    if backend not in ("none", "pmap", "shard_map", "mesh"):
        raise ConfigError(f"train.parallel={backend!r} must be one of none, pmap, shard_map, mesh")
    if jax.process_count() > 1 and backend not in ("shard_map", "mesh"):
        raise ConfigError(f"train.parallel={backend} runs on one host; a job of "
                          f"{jax.process_count()} processes needs --parallel shard_map or mesh")
    per_process = t.batch_size // jax.process_count()
    if backend == "mesh":
        mesh, rules = meshlib.make_mesh(t), meshlib.rules_of(t)
        # the batch rows are split over the mesh axes train.mesh_rules gives 'batch' (data x fsdp by default)
        spec = meshlib.batch_sharding(mesh, rules).spec
        axes = spec[0] if len(spec) else None
        axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        local_shards = int(np.prod([mesh.shape[a] for a in axes])) // jax.process_count()
        if t.batch_size % jax.process_count() or per_process % (max(local_shards, 1) * t.grad_accum):
            split = " x ".join(f"train.mesh_{a}={mesh.shape[a]}" for a in axes) or "1 (batch replicated)"
            raise ConfigError(f"train.batch_size={t.batch_size} must be divisible by the batch's mesh axes "
                              f"x train.grad_accum = {split} x {t.grad_accum} (train.mesh_rules: "
                              f"batch={'+'.join(axes)}) on {jax.process_count()} process(es)")
        return
    devices = 1 if backend == "none" else jax.local_device_count()
    if t.batch_size % jax.process_count() or per_process % (devices * t.grad_accum):
        raise ConfigError(
            f"train.batch_size={t.batch_size} must be divisible by processes x devices x "
            f"train.grad_accum = {jax.process_count()} x {devices} x {t.grad_accum}")


@functools.lru_cache(maxsize=16)
def _compiled(model, tcfg, backend: str, devices: tuple, settings: tuple) -> types.SimpleNamespace:
    """The jitted steps of one (model, train config, backend) on these devices, kept for the
    process: a later ``train()`` of the same configuration (a resume, a second run) finds its
    traced and compiled programs in jit's caches instead of tracing them again (the optimizer,
    a static field of the train state, is kept alike: ``make_optimizer``). ``settings``: the
    environment tracing reads (``steps.trace_settings``): another setting, other programs."""
    common = {"model": model, "tcfg": tcfg}
    if backend == "mesh":
        return _compiled_mesh(model, tcfg, common)
    if backend == "none":
        return types.SimpleNamespace(train=jax.jit(functools.partial(train_step, **common), donate_argnums=0),
                                     eval=jax.jit(functools.partial(eval_step, **common)))
    step = functools.partial(train_step, **common, axis_name=AXIS)
    evaluate = functools.partial(eval_step, **common, axis_name=AXIS)
    if backend == "pmap":
        return types.SimpleNamespace(
            train=jax.pmap(step, axis_name=AXIS, in_axes=(None, 0), out_axes=(None, None)),
            eval=jax.pmap(evaluate, axis_name=AXIS, in_axes=(None, 0), out_axes=None))
    # shard_map (check_layout refused any other name)
    mesh = Mesh(np.asarray(devices), (AXIS,))
    wrap = lambda fn, out: jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=out)
    return types.SimpleNamespace(train=jax.jit(wrap(step, (P(), P())), donate_argnums=0),
                                 eval=jax.jit(wrap(evaluate, P())), mesh=mesh)


def _compiled_mesh(model, t, common: dict) -> types.SimpleNamespace:
    mesh, rules = meshlib.make_mesh(t), meshlib.rules_of(t)
    batch_sharding = meshlib.batch_sharding(mesh, rules)
    abstract_state = meshlib.abstract_train_state(model, t, jax.random.PRNGKey(t.seed))
    state_shardings = meshlib.state_shardings(model, abstract_state, mesh, rules)
    replicated = NamedSharding(mesh, P())
    train = jax.jit(functools.partial(train_step, **common), donate_argnums=0,
                    in_shardings=(state_shardings, batch_sharding), out_shardings=(state_shardings, replicated))
    evaluate = jax.jit(functools.partial(eval_step, **common), in_shardings=(state_shardings, batch_sharding),
                       out_shardings=replicated)
    return types.SimpleNamespace(train=train, eval=evaluate, mesh=mesh, rules=rules, batch_sharding=batch_sharding,
                                 abstract_state=abstract_state, state_shardings=state_shardings)


class Runner:
    """Compiled ``train(state, batch)`` and ``evaluate(state, batch)`` for one backend."""

    def __init__(self, cfg: Config, model, backend: str | None = None):
        self.backend = backend or cfg.train.parallel
        check_layout(cfg, self.backend)
        # the compiled steps' model: train.remat changes what the backward pass keeps, not the parameters
        model = self.model = dataclasses.replace(model, remat=Remat(cfg.train.remat, cfg.train.remat_scan))
        self.num_devices = 1 if self.backend == "none" else jax.local_device_count()
        compiled = _compiled(model, cfg.train, self.backend, tuple(jax.devices()), trace_settings())
        self._train, self._eval = compiled.train, compiled.eval
        for name in ("mesh", "rules", "batch_sharding", "abstract_state", "state_shardings"):
            if hasattr(compiled, name):
                setattr(self, name, getattr(compiled, name))

    def describe(self) -> str:
        """For the log: the backend and its devices (a mesh's axes and sizes)."""
        if self.backend == "mesh":
            sizes = " x ".join(f"{a}={n}" for a, n in self.mesh.shape.items())
            return f"mesh {sizes} over {self.mesh.size} device(s)"
        return f"{self.backend} on {self.num_devices} device(s)"

    @property
    def step_devices(self) -> int:
        """The devices one training step runs on (every process's, on a mesh)."""
        return self.mesh.size if self.backend in ("shard_map", "mesh") else self.num_devices

    def create_state(self, model, tcfg, rng, variables=None):
        """The initial train state (from ``variables`` if given); on a mesh already sharded, each
        parameter and moment created in its shards when there are no variables to start from."""
        if self.backend == "mesh" and variables is None:
            return meshlib.create_sharded_state(model, tcfg, rng, self.state_shardings, self.abstract_state)
        state = create_train_state(model, tcfg, rng, variables)
        return self.place_state(state) if self.backend == "mesh" else state

    # -- placement -------------------------------------------------------------
    def place_state(self, state):
        if self.backend == "mesh":
            return jax.tree_util.tree_map(_on_mesh, state, self.state_shardings)
        if self.backend != "shard_map":
            return state
        sharding = NamedSharding(self.mesh, P())
        # from each process's own (identical) host copy: works across processes too
        return jax.tree_util.tree_map(
            lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda idx, v=np.asarray(x): v[idx]),
            jax.device_get(local(state)))

    def host_slice(self, batch: dict) -> dict:
        """This process's contiguous share of a global batch."""
        n, i = jax.process_count(), jax.process_index()
        if n == 1 or isinstance(batch, LocalBatch):  # LocalBatch: read as this process's part
            return batch
        return {k: v[i * (len(v) // n): (i + 1) * (len(v) // n)] for k, v in batch.items()}

    def place_batch(self, batch: dict) -> dict:
        batch = self.host_slice(batch)
        if self.backend == "pmap":
            d = self.num_devices
            return {k: v.reshape((d, v.shape[0] // d) + v.shape[1:]) for k, v in batch.items()}
        if self.backend in ("shard_map", "mesh"):
            sharding = self.batch_sharding if self.backend == "mesh" else NamedSharding(self.mesh, P(AXIS))
            return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
        return batch

    # -- planning (training/memory.py) -----------------------------------------
    def lower_train(self, state, placed_batch: dict):
        """The train step lowered for these (placed or abstract) arguments."""
        return self._train.lower(state, placed_batch)

    def _shardings(self):
        """(state shardings or None, batch sharding or None) of the jitted backends."""
        if self.backend == "mesh":
            return self.state_shardings, self.batch_sharding
        if self.backend == "shard_map":
            return NamedSharding(self.mesh, P()), NamedSharding(self.mesh, P(AXIS))
        return None, None

    def abstract_state_for_plan(self, abstract_state):
        """``abstract_state``'s leaves with the shardings the step takes them in."""
        shardings, _ = self._shardings()
        if shardings is None:
            return abstract_state
        if isinstance(shardings, NamedSharding):
            shardings = jax.tree_util.tree_map(lambda _: shardings, abstract_state)
        return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                      abstract_state, shardings)

    def abstract_batch(self, batch: dict) -> dict:
        """A global host batch as the shapes (and shardings) ``place_batch`` would give it."""
        _, sharding = self._shardings()
        if self.backend == "pmap":
            d = self.num_devices
            return {k: jax.ShapeDtypeStruct((d, v.shape[0] // d) + v.shape[1:], v.dtype) for k, v in batch.items()}
        return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding) for k, v in batch.items()}

    # -- steps -----------------------------------------------------------------
    def train(self, state, batch: dict):
        return self._train(state, self.place_batch(batch))

    def evaluate(self, state, batch: dict) -> dict:
        return self._eval(state, self.place_batch(batch))
