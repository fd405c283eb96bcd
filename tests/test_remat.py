"""Activation rematerialisation (train.remat, layers/remat.py): the same losses and gradients as
without it, on every architecture and unit, with dropout on (recomputation must redraw the same
masks); and less memory kept for the backward pass."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import GPT_TINY, RNN_LM, TINY
from nety_jax.config import load_config
from nety_jax.layers.remat import Remat
from nety_jax.models import get_model

CASES = {  # small enough to compile in seconds: two blocks of each kind
    "gpt": (GPT_TINY, ["model.vocab_size=120", "model.dropout=0.1", "model.attention_dropout=0.1",
                       "model.d_model=32", "model.d_ff=64"]),
    "hybrid": (TINY, ["model.vocab_size=120"]),
    "rnn_lm": (RNN_LM, ["model.vocab_size=120", "model.hidden=32", "model.d_model=32", "model.layers=2"]),
}


def _model_and_batch(name: str):
    path, sets = CASES[name]
    model = get_model(load_config(path, sets).model)
    rng = np.random.default_rng(0)
    batch = {k: rng.integers(4, 120, v.shape).astype(np.int32) if k != "src_len" else v
             for k, v in model.example_batch(2, 12).items()}
    return model, batch


def _loss_and_grads(model, variables, batch):
    def loss(params):
        sums, _ = model.loss_sums({**variables, "params": params}, batch, train=True,
                                  rng=jax.random.PRNGKey(3))
        return sums["loss_sum"]
    return jax.jit(jax.value_and_grad(loss))(variables["params"])


@pytest.mark.parametrize("name,remats", [
    ("gpt", [Remat("full"), Remat("dots")]),
    ("hybrid", [Remat("full", "layer"), Remat("dots", "step")]),
    ("rnn_lm", [Remat("full", "step"), Remat("dots", "layer")]),
])
def test_same_losses_and_gradients(name, remats):
    model, batch = _model_and_batch(name)
    variables = model.init(jax.random.PRNGKey(0))
    loss, grads = _loss_and_grads(model, variables, batch)
    for remat in remats:
        loss_r, grads_r = _loss_and_grads(dataclasses.replace(model, remat=remat), variables, batch)
        np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
        for a, b in zip(jax.tree_util.tree_leaves(grads_r), jax.tree_util.tree_leaves(grads)):
            # recomputation reorders float sums (jax 0.12's CPU compiler: 1.07e-6 on one element of
            # 3,840); the same dropout masks are checked by the loss above
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=3e-6)


def test_full_remat_keeps_less_for_the_backward_pass():
    """The residuals jax.vjp keeps (traced abstractly): every layer's intermediates without remat,
    about its inputs only with full remat; the matmul outputs in between with dots."""
    model, batch = _model_and_batch("gpt")
    params = model.abstract_variables()["params"]

    def kept(m):
        def backward(p):
            return jax.vjp(lambda q: m.loss_sums({"params": q}, batch, train=True,
                                                 rng=jax.random.PRNGKey(0))[0]["loss_sum"], p)[1]
        res = jax.eval_shape(backward, params)
        return sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(res))

    none, dots, full = (kept(dataclasses.replace(model, remat=Remat(p))) for p in ("none", "dots", "full"))
    assert full < dots < none
