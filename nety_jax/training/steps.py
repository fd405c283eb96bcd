"""Pure training and evaluation steps for any model. No jit here: parallel.py compiles them.

A step returns metric *sums* and a token count; the host divides. With an
``axis_name`` (pmap / shard_map) gradients and sums are psum-ed over devices,
so every backend computes the same token-weighted mean as one device would.
The model adapter is a static argument: the steps never name an architecture.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax
from flax import struct

from nety_jax.config.sections import TrainConfig
from nety_jax.layers.losses import token_mask
from nety_jax.training.optim import make_optimizer


class TrainState(struct.PyTreeNode):
    step: jax.Array
    params: Any
    mutables: Any  # every non-parameter collection a training step updates (e.g. batch_stats)
    opt_state: Any
    rng: jax.Array  # base key; the dropout key of a step is fold_in(rng, step)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    def apply_gradients(self, grads, mutables) -> "TrainState":
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                            opt_state=opt_state, mutables=mutables)

    @property
    def variables(self) -> dict:
        return {"params": self.params, **self.mutables}


def create_train_state(model, tcfg: TrainConfig, rng: jax.Array,
                       variables: Optional[dict] = None) -> TrainState:
    init_rng, dropout_rng = jax.random.split(rng)
    if variables is None:
        variables = _init_of(model)(init_rng)
    tx = make_optimizer(tcfg)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      mutables={k: v for k, v in variables.items() if k != "params"},
                      opt_state=tx.init(params), rng=dropout_rng, tx=tx)


def trace_settings() -> tuple:
    """The ``NETY_JAX_*`` environment, which tracing may read (the GPU fast paths, the CPU kernels):
    part of the key of every traced program kept across calls, so that a changed setting traces anew."""
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("NETY_JAX_")))


def _init_of(model):
    """``model.init`` jitted once per model (and settings): a later train state of the same model
    is not traced again."""
    return _jitted_init(model, trace_settings())


@functools.lru_cache(maxsize=16)
def _jitted_init(model, settings: tuple):
    return jax.jit(model.init)


def _tree_add(a, b):
    return jax.tree_util.tree_map(jnp.add, a, b)


def _micro_batches(batch: dict, k: int) -> dict:
    return jax.tree_util.tree_map(lambda x: x.reshape((k, x.shape[0] // k) + x.shape[1:]), batch)


def _accumulated(grad_fn, params, mutables, batch: dict, rng, k: int):
    """(gradients, loss sums, mutables) summed over ``batch``'s ``k`` micro-batches in a scan, the
    mutables (batch statistics) carried from one to the next; micro-batch i draws from fold_in(rng, i)."""
    def accumulate(carry, xs):
        g_acc, s_acc, stats = carry
        mb, i = xs
        g, (s, stats) = grad_fn(params, stats, mb, jax.random.fold_in(rng, i))
        return (_tree_add(g_acc, g), _tree_add(s_acc, s), stats), None

    # the first micro-batch's outputs start the sums (not zeros): inside shard_map the carry must
    # have the types the body gives (device-varying or not, per leaf), which zeros and the
    # incoming mutables do not; 0 + g is g, so the sums are the same
    micro = _micro_batches(batch, k)
    grads, (sums, mutables) = grad_fn(params, mutables, jax.tree_util.tree_map(lambda x: x[0], micro),
                                      jax.random.fold_in(rng, 0))
    (grads, sums, mutables), _ = jax.lax.scan(accumulate, (grads, sums, mutables),
                                              (jax.tree_util.tree_map(lambda x: x[1:], micro), jnp.arange(1, k)))
    return grads, sums, mutables


def train_step(state: TrainState, batch: dict, *, model, tcfg: TrainConfig,
               axis_name: Optional[str] = None):
    """One optimizer step on ``batch`` (split into ``tcfg.grad_accum`` micro-batches).

    Gradients are of the summed loss divided by the total number of real target
    tokens of the step (over micro-batches and devices, counted before the
    backward pass, so no extra pass over the gradients): micro-batches of different
    sizes are weighted by their tokens.
    """
    rng = jax.random.fold_in(state.rng, state.step)
    if axis_name is not None:
        rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
    tokens = jnp.sum(token_mask(batch))
    if axis_name is not None:
        tokens = jax.lax.psum(tokens, axis_name)
    scale = 1.0 / jnp.maximum(tokens, 1.0)

    def loss_fn(params, mutables, micro, key):
        sums, updates = model.loss_sums({"params": params, **mutables}, micro, train=True, rng=key,
                                        axis_name=axis_name, label_smoothing=tcfg.label_smoothing)
        return sums["loss_sum"] * scale, (sums, {**mutables, **updates})

    grad_fn = jax.grad(loss_fn, has_aux=True)
    params = state.params
    if axis_name is not None:
        # Replicated parameters are device-invariant; differentiating through them inside
        # shard_map (which pmap is built on) would already sum the gradient over devices.
        # Marking them varying keeps per-device gradients, reduced once by the psum below.
        params = jax.lax.pcast(params, axis_name, to="varying")
    if tcfg.grad_accum == 1:
        grads, (sums, mutables) = grad_fn(params, state.mutables, batch, rng)
    else:
        grads, sums, mutables = _accumulated(grad_fn, params, state.mutables, batch, rng, tcfg.grad_accum)
    if axis_name is not None:
        grads, sums = jax.lax.psum((grads, sums), axis_name)
    # Every gradient is computed before anything reads one. Without the barrier XLA's CPU runtime
    # starts the norm of a gradient as soon as it is ready: the output head's comes first in the
    # backward pass, and its reduction (a YNNPACK fusion) then held one of the two threads,
    # waiting for its parallel tasks, while the other ran the rest of the backward pass
    # (docs/PERFORMANCE.md).
    grads = jax.lax.optimization_barrier(grads)
    metrics = {**sums, "grad_norm": optax.tree.norm(grads)}
    return state.apply_gradients(grads, mutables), metrics


def eval_step(state: TrainState, batch: dict, *, model, tcfg: TrainConfig,
              axis_name: Optional[str] = None):
    """Teacher-forced metric sums in eval mode (running statistics, no dropout)."""
    sums, _ = model.loss_sums(state.variables, batch, train=False,
                              label_smoothing=tcfg.label_smoothing)
    if axis_name is not None:
        sums = jax.lax.psum(sums, axis_name)
    return sums
