"""Pure training and evaluation steps. No jit here: parallel.py compiles them.

A step returns metric *sums* and a token count; the host divides. With an
``axis_name`` (pmap / shard_map) gradients and sums are psum-ed over devices,
so every backend computes the same token-weighted mean as one device would.
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax
from flax import struct

from nety_jax.config import Config
from nety_jax.losses import cross_entropy_sums, token_mask
from nety_jax.model import HybridSeq2Seq, init_variables
from nety_jax.optim import make_optimizer


class TrainState(struct.PyTreeNode):
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array  # base key; the dropout key of a step is fold_in(rng, step)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    def apply_gradients(self, grads, batch_stats) -> "TrainState":
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                            opt_state=opt_state, batch_stats=batch_stats)

    @property
    def variables(self) -> dict:
        return {"params": self.params, "batch_stats": self.batch_stats}


def create_train_state(cfg: Config, rng: jax.Array, variables: Optional[dict] = None) -> TrainState:
    init_rng, dropout_rng = jax.random.split(rng)
    if variables is None:
        variables = init_variables(cfg.model, init_rng)
    tx = make_optimizer(cfg.train)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}),
                      opt_state=tx.init(params), rng=dropout_rng, tx=tx)


def _tree_add(a, b):
    return jax.tree_util.tree_map(jnp.add, a, b)


def train_step(state: TrainState, batch: dict, *, cfg: Config, axis_name: Optional[str] = None):
    """One optimizer step on ``batch`` (split into ``cfg.train.grad_accum`` micro-batches).

    Gradients are of the summed loss, accumulated over micro-batches and devices,
    then divided by the total number of real target tokens: micro-batches of
    different sizes are weighted by their tokens.
    """
    model = HybridSeq2Seq(cfg.model)
    rng = jax.random.fold_in(state.rng, state.step)
    if axis_name is not None:
        rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))

    def loss_fn(params, batch_stats, micro, key):
        logits, updates = model.apply(
            {"params": params, "batch_stats": batch_stats}, micro["src"], micro["src_len"],
            micro["tgt_in"], train=True, rngs={"dropout": key}, mutable=["batch_stats"])
        sums = cross_entropy_sums(logits, micro["tgt_out"], token_mask(micro),
                                  cfg.train.label_smoothing)
        return sums["loss_sum"], (sums, updates.get("batch_stats", {}))

    grad_fn = jax.grad(loss_fn, has_aux=True)
    params = state.params
    if axis_name is not None:
        # Replicated parameters are device-invariant; differentiating through them inside
        # shard_map (which pmap is built on) would already sum the gradient over devices.
        # Marking them varying keeps per-device gradients, reduced once by the psum below.
        params = jax.lax.pcast(params, axis_name, to="varying")
    k = cfg.train.grad_accum
    if k == 1:
        grads, (sums, batch_stats) = grad_fn(params, state.batch_stats, batch, rng)
    else:
        micro = jax.tree_util.tree_map(lambda x: x.reshape((k, x.shape[0] // k) + x.shape[1:]), batch)

        def accumulate(carry, xs):
            g_acc, s_acc, stats = carry
            mb, i = xs
            g, (s, stats) = grad_fn(params, stats, mb, jax.random.fold_in(rng, i))
            return (_tree_add(g_acc, g), _tree_add(s_acc, s), stats), None

        zeros_g = jax.tree_util.tree_map(jnp.zeros_like, params)
        zeros_s = {k_: jnp.zeros((), jnp.float32) for k_ in ("loss_sum", "nll_sum", "correct", "tokens")}
        (grads, sums, batch_stats), _ = jax.lax.scan(
            accumulate, (zeros_g, zeros_s, state.batch_stats), (micro, jnp.arange(k)))

    if axis_name is not None:
        grads, sums = jax.lax.psum((grads, sums), axis_name)
    denom = jnp.maximum(sums["tokens"], 1.0)
    grads = jax.tree_util.tree_map(lambda g: g / denom, grads)
    metrics = {**sums, "grad_norm": optax.tree.norm(grads)}
    return state.apply_gradients(grads, batch_stats), metrics


def eval_step(state: TrainState, batch: dict, *, cfg: Config, axis_name: Optional[str] = None):
    """Teacher-forced metric sums in eval mode (running BatchNorm statistics, no dropout)."""
    logits = HybridSeq2Seq(cfg.model).apply(state.variables, batch["src"], batch["src_len"],
                                            batch["tgt_in"], train=False)
    sums = cross_entropy_sums(logits, batch["tgt_out"], token_mask(batch), cfg.train.label_smoothing)
    if axis_name is not None:
        sums = jax.lax.psum(sums, axis_name)
    return sums
