"""The memory planner: bytes per device of a training step, checked before it runs.

Two checks. Before anything is compiled, the train state alone (parameters, their
gradients and the optimizer state, per device after the mesh's sharding) must fit:
a config whose replicated state cannot fit is refused at once. Before the first
step, the compiled step's own figures (``Compiled.memory_analysis()``: arguments,
outputs, temporaries) give the whole footprint, activations included; where the
backend gives none, the activations are estimated from the residuals the backward
pass keeps (``jax.vjp`` traced abstractly). Refusals are one ``ConfigError`` line with
the figures and a fix (more FSDP, remat, smaller batches).

The limit is ``train.memory_limit_gb`` when set; otherwise the device's own
(``memory_stats()['bytes_limit']`` on GPUs and TPUs), and on the CPU the host's memory
shared by the devices the step uses (fake CPU devices share one host).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

import jax
import numpy as np

from nety_jax.errors import ConfigError

GB = 2 ** 30


def _fmt(n: Optional[float]) -> str:
    if n is None:
        return "?"
    for unit, size in (("GB", GB), ("MB", 2 ** 20), ("KB", 2 ** 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


@dataclasses.dataclass
class MemoryPlan:
    """Bytes per device. ``working``: everything the step holds beyond the state it is given
    (gradients, activations, temporaries); ``source`` says where that figure comes from."""
    parameters: int
    optimizer: int
    working: Optional[int]
    total: int
    limit: Optional[int]
    limit_source: str
    source: str
    mesh: str

    def describe(self) -> str:
        return (f"memory per device ({self.mesh}): parameters {_fmt(self.parameters)}, optimizer state "
                f"{_fmt(self.optimizer)}, gradients + activations + temporaries {_fmt(self.working)} "
                f"({self.source}) = {_fmt(self.total)} of {_fmt(self.limit)} ({self.limit_source})")

    def fits(self) -> bool:
        return self.limit is None or self.total <= self.limit


# -- the limit -------------------------------------------------------------------------------------
def device_limit(tcfg, devices_in_step: int) -> tuple[Optional[int], str]:
    """(bytes one device may use, where that comes from)."""
    if tcfg.memory_limit_gb > 0:
        return int(tcfg.memory_limit_gb * GB), f"train.memory_limit_gb={tcfg.memory_limit_gb:g}"
    device = jax.local_devices()[0]
    if device.platform != "cpu":
        try:
            limit = (device.memory_stats() or {}).get("bytes_limit")
        except Exception:  # a backend without memory statistics
            limit = None
        return (int(limit), f"{device.device_kind} memory") if limit else (None, "no limit known")
    try:
        host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None, "no limit known"
    shared = max(1, min(devices_in_step, jax.local_device_count()))
    where = "host memory" + (f" / {shared} CPU devices" if shared > 1 else "")
    return host // shared, where


# -- the state -------------------------------------------------------------------------------------
def _shard_bytes(x, sharding) -> int:
    shape = sharding.shard_shape(x.shape) if sharding is not None else x.shape
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize


def state_bytes(abstract_state, shardings=None) -> tuple[int, int]:
    """(parameter bytes, optimizer-state bytes) per device; ``shardings``: the state's (a mesh),
    None for a state every device holds whole."""
    def total(tree, shards):
        leaves = jax.tree_util.tree_leaves(tree)
        shard_leaves = jax.tree_util.tree_leaves(shards) if shards is not None else [None] * len(leaves)
        return sum(_shard_bytes(x, s) for x, s in zip(leaves, shard_leaves))
    if shardings is None:
        return total(abstract_state.params, None), total(abstract_state.opt_state, None)
    return total(abstract_state.params, shardings.params), total(abstract_state.opt_state, shardings.opt_state)


def _mesh_name(runner) -> str:
    return runner.describe()


def suggestion(cfg, plan: MemoryPlan, devices: int) -> str:
    """What would make the step fit, from the part that dominates."""
    t = cfg.train
    state = plan.parameters + plan.optimizer
    fixes = []
    sharded = t.mesh_fsdp * t.mesh_tensor if t.parallel == "mesh" else 1
    if devices > sharded and state > (plan.working or 0) / 2:
        fixes.append(f"shard the parameters and optimizer state: --set train.parallel=mesh --set "
                     f"train.mesh_fsdp={devices // max(t.mesh_tensor if t.parallel == 'mesh' else 1, 1)}")
    if plan.working and plan.working > state / 2:
        if getattr(t, "remat", "full") != "full":
            fixes.append("recompute activations in the backward pass: --set train.remat=full")
        fixes.append(f"a smaller train.batch_size (now {t.batch_size}) or a larger train.grad_accum "
                     f"(now {t.grad_accum})")
    if not fixes:
        fixes.append("a smaller model, or more devices with train.mesh_fsdp")
    return "; or ".join(fixes)


def refuse(cfg, plan: MemoryPlan, devices: int, when: str) -> None:
    raise ConfigError(f"{when}: {plan.describe()}: does not fit; {suggestion(cfg, plan, devices)}")


def check_state(runner, model, cfg) -> MemoryPlan:
    """Before compiling: parameters, gradients and optimizer state per device must fit."""
    abstract, shardings = abstract_state_of(runner, model, cfg)
    params, opt = state_bytes(abstract, shardings)
    limit, where = device_limit(cfg.train, runner.step_devices)
    plan = MemoryPlan(params, opt, params, 2 * params + opt, limit, where,
                      "the gradients alone, before compiling", _mesh_name(runner))
    if not plan.fits():
        refuse(cfg, plan, jax.device_count(), "the train state does not fit")
    return plan


def abstract_state_of(runner, model, cfg):
    """(abstract train state, its shardings or None)."""
    if runner.backend == "mesh":
        return runner.abstract_state, runner.state_shardings
    from nety_jax.training.mesh import abstract_train_state
    return abstract_train_state(model, cfg.train, jax.random.PRNGKey(cfg.train.seed)), None


# -- the compiled step -----------------------------------------------------------------------------
def compiled_stats(runner, state, batch) -> Optional[object]:
    """``memory_analysis()`` of the train step compiled for ``state`` and the placed (or abstract)
    ``batch``, or None where the backend has none. Compiled for the arrays the first step gets,
    it is the program that step runs: jit finds it in its caches."""
    try:
        return runner.lower_train(state, batch).compile().memory_analysis()
    except Exception:  # a backend without memory statistics: the analytic estimate instead
        return None


def residual_bytes(model, abstract_state, batch, shards: int) -> int:
    """Bytes the backward pass keeps from the forward (``jax.vjp``'s residuals, traced abstractly),
    split over the ``shards`` the batch is split into."""
    def backward(params, mutables, batch):
        def loss(p):
            sums, _ = model.loss_sums({"params": p, **mutables}, batch, train=True, rng=jax.random.PRNGKey(0))
            return sums["loss_sum"]
        return jax.vjp(loss, params)[1]

    residuals = jax.eval_shape(backward, abstract_state.params, abstract_state.mutables, batch)
    total = sum(int(np.prod(x.shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize
                for x in jax.tree_util.tree_leaves(residuals))
    return total // max(shards, 1)


def plan_step(runner, model, cfg, state, batch) -> MemoryPlan:
    """The whole step's bytes per device, from the compiled program where the backend says."""
    abstract, shardings = abstract_state_of(runner, model, cfg)
    params, opt = state_bytes(abstract, shardings)
    limit, where = device_limit(cfg.train, runner.step_devices)
    stats = compiled_stats(runner, state, batch)
    if stats is not None:
        held = stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
        total = held + stats.temp_size_in_bytes + stats.generated_code_size_in_bytes
        working, source = total - params - opt, "the compiled step's memory analysis"
    else:
        shards = runner.step_devices // (runner.mesh.shape["tensor"] if runner.backend == "mesh" else 1)
        working = params + residual_bytes(runner.model, abstract, batch, shards)
        total, source = params + opt + working, "analytic: gradients + the backward pass's residuals"
    return MemoryPlan(params, opt, working, total, limit, where, source, _mesh_name(runner))


def check_step(runner, model, cfg, state, batch) -> MemoryPlan:
    """Before the first step (``batch`` as the host has it): the whole step must fit."""
    plan = plan_step(runner, model, cfg, state, runner.place_batch(batch))
    if not plan.fits():
        refuse(cfg, plan, jax.device_count(), "the training step does not fit")
    return plan


def plan_config(cfg) -> MemoryPlan:
    """``nety-jax plan``: the step of ``cfg`` on its longest batches, compiled from shapes alone
    (no data, no parameters); the vocabulary is ``data.vocab_size`` (a new run's at most)."""
    from nety_jax.models import get_model
    from nety_jax.training.parallel import Runner
    cfg = cfg.replace_model(vocab_size=cfg.data.vocab_size)
    model = get_model(cfg.model)
    runner = Runner(cfg, model)
    check_state(runner, model, cfg)
    abstract, _ = abstract_state_of(runner, model, cfg)
    batch = model.task.longest_batch(cfg)
    plan = plan_step(runner, model, cfg, runner.abstract_state_for_plan(abstract), runner.abstract_batch(batch))
    if not plan.fits():
        refuse(cfg, plan, jax.device_count(), "the training step does not fit")
    return plan


# -- generation ------------------------------------------------------------------------------------
def weights_bytes(abstract_variables) -> int:
    """Bytes per device of abstract variables, each in the sharding it carries (none: whole)."""
    return sum(_shard_bytes(x, getattr(x, "sharding", None)) for x in jax.tree_util.tree_leaves(abstract_variables))


def check_weights(placed, tcfg, tensor: int) -> None:
    """Before generation restores anything: the weights per device (``placed(n)``: the abstract
    variables split over n devices) must fit one device; refused with the figure and the
    smallest ``--mesh-tensor`` of this host's devices that fits."""
    need = weights_bytes(placed(tensor))
    limit, source = device_limit(tcfg, tensor)
    if limit is None or need <= limit:
        return
    counts = [2 ** k for k in range(1, 16) if tensor < 2 ** k <= jax.local_device_count()]
    fits = next((n for n in counts if weights_bytes(placed(n)) <= limit), None)
    fix = (f"split them with --mesh-tensor {fits}" if fits else
           f"no split over this host's {jax.local_device_count()} device(s) fits: a quantized copy "
           "(nety-jax quantize) or a host with more device memory")
    raise ConfigError(f"the model's weights alone need {_fmt(need)} per device on {tensor} device(s), more "
                      f"than {_fmt(limit)} ({source}): {fix}")
