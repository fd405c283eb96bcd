"""Masked, optionally label-smoothed cross-entropy returned as sums and a count."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from nety_jax.config.sections import PAD_ID


def token_mask(batch: dict) -> jax.Array:
    """1.0 at real target tokens, times the per-row ``weight`` when the batch has one."""
    mask = (batch["targets"] != PAD_ID).astype(jnp.float32)
    if "weight" in batch:
        mask = mask * batch["weight"][:, None]
    return mask


def cross_entropy_sums(logits, targets, mask, label_smoothing: float = 0.0) -> dict:
    """Sums over real tokens: the training loss, the plain NLL, correct tokens, and the count.

    Smoothing spreads ``label_smoothing`` uniformly over the vocabulary (optax.smooth_labels'
    convention), computed without a one-hot: with q = (1 - e) onehot + e / V,
    -sum q log p = (1 - e) nll + e (logsumexp - mean logits). Pads never enter the sums.
    """
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    nll = lse - target_logit
    if label_smoothing > 0.0:  # uniform over the possible tokens: blocked ids (logit -1e9) are not
        possible = logits > -1e8
        mean = jnp.sum(jnp.where(possible, logits, 0.0), axis=-1) / jnp.sum(possible, axis=-1)
        uniform = lse - mean
        loss = (1.0 - label_smoothing) * nll + label_smoothing * uniform
    else:
        loss = nll
    # the target is the argmax (a max-reduce: XLA's CPU argmax, a variadic reduce, is far slower:
    # docs/PERFORMANCE.md); ties count as correct
    correct = (target_logit >= jnp.max(logits, axis=-1)).astype(jnp.float32)
    return {"loss_sum": jnp.sum(loss * mask), "nll_sum": jnp.sum(nll * mask),
            "correct": jnp.sum(correct * mask), "tokens": jnp.sum(mask)}


HEAD_ROWS = 512  # rows of the output head a fused step computes at once: (rows, V) float32 logits


def _head_chunk(h, weight, bias, targets, transposed: bool, blocked):
    """(R, D) states -> (R, V) float32 logits, their log-sum-exp, max and target logit."""
    z = jnp.dot(h, weight.T if transposed else weight, preferred_element_type=jnp.float32)
    if bias is not None:
        z = z + bias
    if blocked is not None:
        z = jnp.where(blocked, -1e9, z)
    top = jnp.max(z, axis=-1)
    lse = top + jnp.log(jnp.sum(jnp.exp(z - top[:, None]), axis=-1))
    target = jnp.take_along_axis(z, targets[:, None], axis=-1)[:, 0]
    return z, lse, top, target


def _head_sums(lse, top, target, mask):
    nll = lse - target
    return jnp.stack([jnp.sum(nll * mask), jnp.sum((target >= top).astype(jnp.float32) * mask)])


def _chunked(h, targets, mask, rows: int):
    n = h.shape[0]
    pad = -n % rows
    if pad:
        h = jnp.pad(h, ((0, pad), (0, 0)))
        targets, mask = jnp.pad(targets, (0, pad)), jnp.pad(mask, (0, pad))
    k = (n + pad) // rows
    return h.reshape(k, rows, -1), targets.reshape(k, rows), mask.reshape(k, rows)


def _blocked_mask(vocab: int, blocked: tuple):
    if not blocked:
        return None
    out = np.zeros(vocab, bool)
    out[list(blocked)] = True
    return jnp.asarray(out)


def _zeros(shape, *like):
    """float32 zeros as varying (over shard_map's manual axes) as ``like``: a scan's carry must
    start with the varying axes of what its body adds (jnp.zeros alone is device-invariant)."""
    probe = sum(x[(0,) * x.ndim].astype(jnp.float32) for x in like if x is not None)
    return jnp.zeros_like(probe, shape=shape)


def _fused_forward(h, weight, bias, targets, mask, transposed, blocked, rows):
    vocab = weight.shape[0 if transposed else 1]
    hs, ts, ms = _chunked(h, targets, mask, rows)

    def one(sums, xs):
        hc, tc, mc = xs
        _, lse, top, target = _head_chunk(hc, weight, bias, tc, transposed, _blocked_mask(vocab, blocked))
        return sums + _head_sums(lse, top, target, mc), None
    sums, _ = jax.lax.scan(one, _zeros((2,), hs, ts, ms, weight, bias), (hs, ts, ms))
    return sums


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _fused(h, weight, bias, targets, mask, transposed, blocked, rows):
    return _fused_forward(h, weight, bias, targets, mask, transposed, blocked, rows)


def _fused_fwd(h, weight, bias, targets, mask, transposed, blocked, rows):
    """The sums, and the gradient of the NLL sum computed chunk by chunk on the way: the loss's
    gradient with respect to a chunk's logits needs only that chunk (softmax - one-hot), so
    neither the logits nor their gradient ever exist for the whole batch at once."""
    n, vocab = h.shape[0], weight.shape[0 if transposed else 1]
    hs, ts, ms = _chunked(h, targets, mask, rows)
    block = _blocked_mask(vocab, blocked)

    def one(carry, xs):
        sums, dw, db = carry
        hc, tc, mc = xs
        z, lse, top, target = _head_chunk(hc, weight, bias, tc, transposed, block)
        d = jnp.exp(z - lse[:, None])
        d = d.at[jnp.arange(rows), tc].add(-1.0) * mc[:, None]
        if block is not None:
            d = jnp.where(block, 0.0, d)
        dh = jnp.dot(d, weight if transposed else weight.T, preferred_element_type=jnp.float32)
        dw = dw + (jnp.dot(d.T, hc) if transposed else jnp.dot(hc.T, d))
        db = None if db is None else db + jnp.sum(d, axis=0)
        return (sums + _head_sums(lse, top, target, mc), dw, db), dh
    like = (hs, ts, ms, weight, bias)
    zeros = (_zeros((2,), *like), _zeros(weight.shape, *like), None if bias is None else _zeros(bias.shape, *like))
    (sums, dw, db), dh = jax.lax.scan(one, zeros, (hs, ts, ms))
    return sums, (dh.reshape(-1, h.shape[1])[:n], dw, db, targets, mask)


def _fused_bwd(transposed, blocked, rows, res, ct):
    dh, dw, db, targets, mask = res
    g = ct[0]  # the correct count has no gradient
    return (g * dh, (g * dw).astype(dw.dtype), None if db is None else g * db,
            np.zeros(targets.shape, jax.dtypes.float0), jnp.zeros_like(mask))


_fused.defvjp(_fused_fwd, _fused_bwd)


def head_cross_entropy_sums(h, weight, bias, targets, mask, *, transposed: bool = False,
                            blocked: tuple = (), rows: int = HEAD_ROWS) -> dict:
    """``cross_entropy_sums`` (no label smoothing) of the output head's logits without the
    logits: h (..., D) float32 states, ``weight`` (D, V) (or the (V, D) table when
    ``transposed``: a tied head), ``bias`` (V,) or None, ``blocked`` ids whose logits are -1e9.
    ``rows`` states at a time; differentiable in h, weight and bias."""
    d = h.shape[-1]
    h, targets, mask = h.reshape(-1, d), targets.reshape(-1), mask.reshape(-1).astype(jnp.float32)
    rows = max(1, min(rows, h.shape[0]))
    nll, correct = _fused(h, weight, bias, targets, mask, transposed, tuple(blocked), rows)
    return {"loss_sum": nll, "nll_sum": nll, "correct": correct, "tokens": jnp.sum(mask)}
