import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nety_jax.cli import main
from nety_jax.layers import TransformerDecoder
from nety_jax.models import get_model
from nety_jax.models.hybrid.network import HybridSeq2Seq, decoder_spec
from conftest import PARITY


def _inputs(vocab=64, b=3, s=7, t=9, seed=1):
    rs = np.random.default_rng(seed)
    lengths = np.array([s, s - 2, 3][:b], np.int32)
    src = rs.integers(4, vocab, (b, s)).astype(np.int32)
    for i, n in enumerate(lengths):
        src[i, n:] = 0
    tgt = rs.integers(4, vocab, (b, t)).astype(np.int32)
    return jnp.asarray(src), jnp.asarray(lengths), jnp.asarray(tgt)


def test_info_matches_nety_parameter_count(capsys):
    assert main(["info", "--config", PARITY, "--set", "model.vocab_size=1000"]) == 0
    out = capsys.readouterr().out
    assert "32,775,784" in out
    lines = {line.rsplit(None, 1)[0].strip(): line.rsplit(None, 1)[1] for line in out.splitlines()
             if line and line[0] != "-" and line.rsplit(None, 1)[-1].replace(",", "").isdigit()}
    assert lines["encoder embedding (rnn_embedding)"] == "512,000"
    assert lines["encoder body (rnn_encoder)"] == "6,014,592"
    assert lines["decoder (transformer_decoder)"] == "26,249,192"
    assert "MB" in out


@pytest.mark.parametrize("memory,copy", [("pooled", False), ("sequence", False), ("sequence", True)])
def test_cached_decoding_equals_teacher_forcing(tiny_cfg, memory, copy):
    cfg = tiny_cfg.model.replace(memory=memory, copy=copy)
    variables = get_model(cfg).init(jax.random.PRNGKey(0))
    model = HybridSeq2Seq(cfg)
    src, lengths, tgt = _inputs()
    full = model.apply(variables, src, lengths, tgt)
    memory_, mask = model.apply(variables, src, lengths, method=model.encode)
    step = jax.jit(lambda tokens, cache: model.apply(variables, tokens, cache, method=model.decode_step))
    for prompt in (1, 4):  # one token at a time, and a 4-token prompt first
        cache = model.apply(variables, memory_, mask, 16, src, method=model.init_cache)
        logits, cache = step(tgt[:, :prompt], cache)
        chunks = [logits]
        for t in range(prompt, tgt.shape[1]):
            logits, cache = step(tgt[:, t:t + 1], cache)
            chunks.append(logits)
        cached = jnp.concatenate(chunks, axis=1)
        assert float(jnp.max(jnp.abs(cached - full))) < 1e-4
        assert np.asarray((cache["decoder"] if copy else cache)["pos"]).tolist() == [tgt.shape[1]] * 3


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_decoder_is_causal(tiny_cfg, norm):
    cfg = tiny_cfg.model.replace(norm=norm)
    variables = get_model(cfg).init(jax.random.PRNGKey(0))
    model = HybridSeq2Seq(cfg)
    src, lengths, tgt = _inputs()
    memory, mask = model.apply(variables, src, lengths, method=model.encode)
    x = jax.random.normal(jax.random.PRNGKey(3), (3, tgt.shape[1], cfg.d_model))
    dec = {"params": variables["params"]["decoder"]}
    t_len = tgt.shape[1]
    decoder = TransformerDecoder(decoder_spec(cfg))

    @jax.jit
    def grad_of_loss_at(x, t):
        def loss_at_t(x):
            logits = decoder.apply(dec, decoder.apply(dec, x, memory, mask, method=decoder.hidden),
                                   method=decoder.logits)
            row = jax.lax.dynamic_index_in_dim(logits, t, axis=1, keepdims=False)
            return jnp.sum(jax.nn.log_softmax(row) * jnp.arange(cfg.vocab_size))
        return jax.grad(loss_at_t)(x)

    for t in range(t_len):
        g = grad_of_loss_at(x, t)
        assert np.all(np.asarray(g[:, t + 1:]) == 0.0), f"position {t} sees the future"
        assert np.any(np.asarray(g[:, : t + 1]) != 0.0)


# every value of every option at least once, in varied combinations
VARIANTS = [("lstm", True, "post", False, "pooled"), ("lstm", True, "pre", True, "sequence"),
            ("gru", True, "post", False, "sequence"), ("gru", False, "pre", True, "pooled"),
            ("rnn", True, "pre", False, "pooled"), ("rnn", False, "post", True, "sequence"),
            ("lstm", False, "post", False, "sequence")]


@pytest.mark.parametrize("cell, bidirectional, norm, tie, memory", VARIANTS)
def test_variants_build_and_run(tiny_cfg, cell, bidirectional, norm, tie, memory):
    cfg = tiny_cfg.model.replace(cell=cell, bidirectional=bidirectional, norm=norm, tie_output=tie,
                                 output_bias=not tie, memory=memory,
                                 head_norm="layer" if cell == "gru" else "batch")
    variables = get_model(cfg).init(jax.random.PRNGKey(0))
    src, lengths, tgt = _inputs()
    logits, updates = jax.jit(lambda v: HybridSeq2Seq(cfg).apply(
        v, src, lengths, tgt, train=True, rngs={"dropout": jax.random.PRNGKey(1)},
        mutable=["batch_stats"]))(variables)
    assert logits.shape == (3, tgt.shape[1], cfg.vocab_size)
    assert bool(jnp.all(jnp.isfinite(logits)))
    assert ("fc_out" in variables["params"]["decoder"]) == (not tie)


def test_bfloat16_compute_keeps_float32_params(tiny_cfg):
    cfg = tiny_cfg.model.replace(dtype="bfloat16")
    variables = get_model(cfg).init(jax.random.PRNGKey(0))
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(variables["params"]))
    src, lengths, tgt = _inputs()
    logits = HybridSeq2Seq(cfg).apply(variables, src, lengths, tgt)
    assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))
    ref = HybridSeq2Seq(dataclasses.replace(cfg, dtype="float32")).apply(variables, src, lengths, tgt)
    assert float(jnp.max(jnp.abs(ref - logits))) < 0.5
