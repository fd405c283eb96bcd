"""The recurrent encoder against flax's own nn.RNN / nn.Bidirectional, and padding invariance."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nety_jax.layers import RecurrentStack, flip_sequences
from nety_jax.models import get_model
from nety_jax.models.hybrid.network import HybridSeq2Seq

B, S, D, H = 4, 9, 12, 8
LENGTHS = jnp.asarray([9, 6, 3, 1], jnp.int32)


def _flax_cell_params(ours, cell, d):
    """Direction ``d`` of our fused layer -> flax's per-gate cells (biases summed where flax has
    one). Our input kernel holds both directions' (in, G*H) blocks side by side; the recurrent
    kernel stacks them on a leading axis."""
    g = {"lstm": 4, "gru": 3}[cell] * H
    wi, bi = ours["input"]["kernel"][:, d * g:(d + 1) * g], ours["input"]["bias"][d * g:(d + 1) * g]
    wh, bh = ours["recurrent"]["kernel"][d], ours["recurrent"]["bias"][d]
    split = lambda w: jnp.split(w, {"lstm": 4, "gru": 3}[cell], axis=-1)
    if cell == "lstm":
        out = {}
        for g, a, b, c, d in zip("ifgo", split(wi), split(wh), split(bi), split(bh)):
            out[f"i{g}"] = {"kernel": a}
            out[f"h{g}"] = {"kernel": b, "bias": c + d}
        return out
    (ir, iz, in_), (hr, hz, hn) = split(wi), split(wh)
    (bir, biz, bin_), (bhr, bhz, bhn) = split(bi), split(bh)
    return {"ir": {"kernel": ir, "bias": bir + bhr}, "iz": {"kernel": iz, "bias": biz + bhz},
            "in": {"kernel": in_, "bias": bin_}, "hr": {"kernel": hr}, "hz": {"kernel": hz},
            "hn": {"kernel": hn, "bias": bhn}}


class FlaxReference(nn.Module):
    cell: str
    layers: int

    @nn.compact
    def __call__(self, x, lengths):
        cell = {"lstm": nn.LSTMCell, "gru": nn.GRUCell}[self.cell]
        for k in range(self.layers):
            x = nn.Bidirectional(nn.RNN(cell(H)), nn.RNN(cell(H)))(x, seq_lengths=lengths)
        return x


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 3])
def test_bilstm_equals_flax_bidirectional(cell, layers):
    x = jax.random.normal(jax.random.PRNGKey(0), (B, S, D))
    ours = RecurrentStack(cell, H, layers, bidirectional=True)
    params = nn.unbox(ours.init(jax.random.PRNGKey(1), x, LENGTHS)["params"])
    out, fwd, _ = ours.apply({"params": params}, x, LENGTHS)
    # flax names the cells by creation order: forward, backward, forward, ...
    name = {"lstm": "LSTMCell", "gru": "GRUCell"}[cell]
    ref_params = {}
    for k in range(layers):
        ref_params[f"{name}_{2 * k}"] = _flax_cell_params(params[f"l{k}"], cell, 0)
        ref_params[f"{name}_{2 * k + 1}"] = _flax_cell_params(params[f"l{k}"], cell, 1)
    ref = FlaxReference(cell, layers).apply({"params": ref_params}, x, LENGTHS)
    real = np.arange(S)[None, :] < np.asarray(LENGTHS)[:, None]
    diff = np.abs(np.asarray(out) - np.asarray(ref))[real]
    assert diff.max() < 1e-5
    np.testing.assert_allclose(np.asarray(fwd), np.asarray(out[..., :H]))


def test_flip_sequences_keeps_padding_in_place():
    x = jnp.arange(2 * 5).reshape(2, 5)
    flipped = flip_sequences(x[..., None], jnp.asarray([3, 5]))[..., 0]
    np.testing.assert_array_equal(np.asarray(flipped), [[2, 1, 0, 3, 4], [9, 8, 7, 6, 5]])
    np.testing.assert_array_equal(np.asarray(flip_sequences(x[..., None], None)[..., 0]), x[:, ::-1])


@pytest.mark.parametrize("memory", ["sequence", "pooled"])
def test_default_mode_ignores_padding_content(tiny_cfg, memory):
    cfg = tiny_cfg.model.replace(memory=memory)
    assert cfg.enc_attention_mask and cfg.pooling == "last_real"
    variables = get_model(cfg).init(jax.random.PRNGKey(0))
    model = HybridSeq2Seq(cfg)
    rs = np.random.default_rng(0)
    src = rs.integers(4, 64, (B, S)).astype(np.int32)
    real = np.arange(S)[None, :] < np.asarray(LENGTHS)[:, None]
    a = np.where(real, src, 0)
    b = np.where(real, src, rs.integers(4, 64, (B, S)))  # different tokens in the padding
    (ma, mask), (mb, _) = (model.apply(variables, jnp.asarray(v), LENGTHS, method=model.encode)
                           for v in (a, b))
    ma, mb, mask = map(np.asarray, (ma, mb, mask))
    assert np.abs(ma - mb)[mask].max() < 1e-5  # pooled vector and every real position
    if memory == "sequence":
        assert mask.shape == (B, S + 1) and mask[:, 0].all()


def test_parity_mode_is_sensitive_to_padding(tiny_cfg):
    """NETY pools at the last padded position: the padding content changes its memory."""
    cfg = tiny_cfg.model.replace(memory="pooled", pooling="last_padded", enc_attention_mask=False,
                                 enc_attention_residual=False)
    variables = get_model(cfg).init(jax.random.PRNGKey(0))
    model = HybridSeq2Seq(cfg)
    src = np.full((B, S), 5, np.int32)
    other = src.copy()
    other[:, -1] = 9
    ma, _ = model.apply(variables, jnp.asarray(src), LENGTHS, method=model.encode)
    mb, _ = model.apply(variables, jnp.asarray(other), LENGTHS, method=model.encode)
    assert float(jnp.max(jnp.abs(ma - mb))) > 1e-4
