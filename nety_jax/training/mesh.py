"""The device mesh (``train.parallel=mesh``): data, FSDP and tensor parallelism on named axes.

Every device of every process sits in one mesh of axes ``('data', 'fsdp', 'tensor')`` sized
by ``train.mesh_data`` (-1: the devices the others leave), ``train.mesh_fsdp`` and
``train.mesh_tensor``. Parameters carry logical axis names (``layers/partitioning.py``) and
``train.mesh_rules`` maps each name to mesh axes (MaxText's ``logical_axis_rules``): with the
default rules the model width ('embed') is split over 'fsdp' and heads, MLP width, recurrent
gates and the vocabulary over 'tensor'. Adam's moments take their parameter's sharding, so
FSDP shards the optimizer state too; the batch is split over ('data', 'fsdp').

A dimension that its mesh axes do not divide stays whole rather than failing (tiny configs and
odd vocabularies still run) and hands those axes to the array's next sharded dimension that they
divide (``mesh_spec``), so an odd vocabulary's table is still split.

The step is the plain ``train_step`` (no axis name, no explicit collective) compiled by
``jax.jit`` with the state's and the batch's shardings; XLA's partitioner inserts the
all-gathers and reduce-scatters. BatchNorm statistics are computed over the global batch
as on one device, so every mesh computes what one device computes.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nety_jax.config.sections import MESH_AXES, TrainConfig, parse_mesh_rules
from nety_jax.errors import ConfigError
from nety_jax.layers.partitioning import AXES
from nety_jax.training.steps import create_train_state

BATCH = "batch"


def mesh_shape(tcfg: TrainConfig, devices: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) for ``devices`` devices; a one-line ConfigError naming the fields."""
    fsdp, tensor = tcfg.mesh_fsdp, tcfg.mesh_tensor
    data = tcfg.mesh_data
    if data == -1:
        if devices % (fsdp * tensor):
            raise ConfigError(f"train.mesh_fsdp={fsdp} x train.mesh_tensor={tensor} does not divide the "
                              f"{devices} devices")
        data = devices // (fsdp * tensor)
    if data * fsdp * tensor != devices:
        raise ConfigError(f"train.mesh_data={data} x train.mesh_fsdp={fsdp} x train.mesh_tensor={tensor} = "
                          f"{data * fsdp * tensor} must equal the number of devices ({devices}); "
                          "set train.mesh_data=-1 to take the devices left")
    return data, fsdp, tensor


def make_mesh(tcfg: TrainConfig, devices=None) -> Mesh:
    """The mesh over ``devices`` (default: every device of every process), process-major, so each
    process holds a contiguous block of the batch."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(tcfg, len(devices))
    return Mesh(np.asarray(devices, dtype=object).reshape(shape), MESH_AXES)


def rules_of(tcfg: TrainConfig) -> tuple:
    rules = parse_mesh_rules(tcfg.mesh_rules)
    unknown = sorted({name for name, _ in rules} - set(AXES) - {BATCH})
    if unknown:
        raise ConfigError(f"train.mesh_rules: unknown logical axis {unknown[0]!r} (known: "
                          f"{', '.join((BATCH,) + AXES)})")
    return rules


def mesh_spec(logical: P, shape: tuple, mesh: Mesh, rules: tuple) -> P:
    """Logical names -> mesh axes. A dimension its mesh axes do not divide stays whole and hands
    them to the array's first other sharded dimension that divides with them too: GPT-2's
    50,257-row vocabulary over ``tensor`` leaves the embedding's width to take 'tensor' beside
    'fsdp', rather than every device holding the whole table. Dimensions without a rule (or
    with an empty one, 'directions') never take an axis."""
    axes = nn.logical_to_mesh_axes(tuple(logical), rules) if len(logical) else P()
    size = lambda names: int(np.prod([mesh.shape[a] for a in names]))
    out, spare = [], []
    for dim, entry in zip(shape, tuple(axes) + (None,) * (len(shape) - len(axes))):
        names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        out.append(names if dim % size(names) == 0 else ())
        spare += [] if out[-1] else list(names)
    for axis in spare:
        for i, dim in enumerate(shape):
            if out[i] and dim % (size(out[i]) * mesh.shape[axis]) == 0:
                out[i] += (axis,)
                break
    return P(*(None if not names else names[0] if len(names) == 1 else names for names in out))


def _boxed(abstract, logical):
    """Abstract arrays boxed with their logical names (unnamed ones stay bare)."""
    def box(x, spec):
        return nn.LogicallyPartitioned(x, tuple(spec)) if len(spec) else x
    return jax.tree_util.tree_map(box, abstract, logical)


def logical_state(model, abstract_state):
    """The train state's tree of logical PartitionSpecs: parameters' names from the model, Adam's
    moments the names of their parameters (optax keeps the boxes), everything else P()."""
    names = model.logical_axes()
    params = _boxed(abstract_state.params, names["params"])
    opt = nn.get_partition_spec(jax.eval_shape(abstract_state.tx.init, params))
    none = lambda tree: jax.tree_util.tree_map(lambda _: P(), tree)
    return abstract_state.replace(step=P(), params=names["params"], mutables=none(abstract_state.mutables),
                                  opt_state=opt, rng=P())


def state_shardings(model, abstract_state, mesh: Mesh, rules: tuple):
    """NamedShardings of every leaf of the train state on ``mesh``."""
    logical = logical_state(model, abstract_state)
    return jax.tree_util.tree_map(
        lambda spec, x: NamedSharding(mesh, mesh_spec(spec, x.shape, mesh, rules)), logical, abstract_state,
        is_leaf=lambda x: isinstance(x, P))


def inference_mesh(tensor: int, devices=None) -> Mesh:
    """The mesh of tensor-parallel generation: ``tensor`` of this process's devices on the
    'tensor' axis (data = fsdp = 1), so the training rules split heads, MLP width, recurrent
    gates and the vocabulary and keep the rest whole."""
    devices = list(jax.local_devices() if devices is None else devices)
    if isinstance(tensor, bool) or not isinstance(tensor, int) or tensor < 1:
        raise ConfigError(f"--mesh-tensor must be an integer >= 1, got {tensor!r}")
    if tensor > len(devices):
        raise ConfigError(f"--mesh-tensor={tensor}: this process has {len(devices)} device(s)")
    return Mesh(np.asarray(devices[:tensor], dtype=object).reshape(1, 1, tensor), MESH_AXES)


def placed_variables(names, abstract_variables, mesh: Mesh, rules: tuple):
    """Abstract variables with their shardings on ``mesh`` by their logical ``names``
    (``Model.logical_axes()``; unnamed ones, batch statistics, replicated): the placement a
    training state's parameters get."""
    return jax.tree_util.tree_map(
        lambda x, spec: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                             sharding=NamedSharding(mesh, mesh_spec(spec, x.shape, mesh, rules))),
        abstract_variables, names)


def batch_sharding(mesh: Mesh, rules: tuple) -> NamedSharding:
    axes = nn.logical_to_mesh_axes((BATCH,), rules)
    return NamedSharding(mesh, P(axes[0]))


def create_sharded_state(model, tcfg: TrainConfig, rng, shardings, abstract_state):
    """The initial train state, each parameter and moment created directly in its shards."""
    leaves = jax.jit(lambda r: jax.tree_util.tree_leaves(create_train_state(model, tcfg, r)),
                     out_shardings=jax.tree_util.tree_leaves(shardings))(rng)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(abstract_state), leaves)


def abstract_train_state(model, tcfg: TrainConfig, rng):
    """The train state's shapes and dtypes (kept per configuration: the same tree again)."""
    return _abstract_train_state(model, tcfg, jax.ShapeDtypeStruct(np.shape(rng), rng.dtype))


@functools.lru_cache(maxsize=16)
def _abstract_train_state(model, tcfg: TrainConfig, rng: jax.ShapeDtypeStruct):
    return jax.eval_shape(functools.partial(create_train_state, model, tcfg), rng)


def bytes_per_device(tree) -> int:
    """Bytes of ``tree``'s arrays held by the first addressable device (from the shards)."""
    device = None
    total = 0
    for x in jax.tree_util.tree_leaves(tree):
        if not isinstance(x, jax.Array):
            continue
        shards = x.addressable_shards
        device = device or shards[0].device
        total += sum(s.data.nbytes for s in shards if s.device == device)
    return total
