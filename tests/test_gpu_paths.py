"""The GPU fast paths, checked on the CPU: cuDNN's fused attention and LSTM are chosen by backend
at trace time (forced here), take the arguments whose XLA form equals our own attention / scan,
and the CPU-only settings (our kernels, glibc's malloc, synchronous dispatch) stay off elsewhere."""
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nety_jax import kernels
from nety_jax.layers import RecurrentStack, attention
from nety_jax.layers import recurrent
from nety_jax.models import get_model
from nety_jax.models.hybrid.network import HybridSeq2Seq
from conftest import ROOT

rnn = recurrent.cudnn_rnn()


def _qkv(b=3, t=7, s=7, h=2, d=8, seed=0):
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    return [jax.random.normal(k, (b, n, h, d), jnp.float32) for k, n in zip(keys, (t, s, s))]


def _ours(q, k, v, mask):
    """Today's attention: explicit float32 softmax over (B, H, T, S) scores."""
    probs = attention.attention_weights(q.swapaxes(1, 2), k.swapaxes(1, 2), mask)
    return attention.weighted_values(probs, v.swapaxes(1, 2)).swapaxes(1, 2)


@pytest.mark.parametrize("causal,with_lengths", [(True, False), (False, True), (True, True)])
def test_dot_product_attention_equals_our_attention(causal, with_lengths):
    q, k, v = _qkv()
    lengths = jnp.array([7, 4, 1], jnp.int32) if with_lengths else None
    mask = attention.combined_mask(None, causal, lengths, 7)
    for implementation in (None, "xla"):  # what the cuDNN path is given, in XLA's form
        fused = attention.fused_attention(q, k, v, causal, lengths, implementation=implementation)
        np.testing.assert_allclose(fused, _ours(q, k, v, mask), atol=2e-6)


def test_the_decode_step_form_equals_masked_attention():
    q, k, v = _qkv(t=1, s=9)
    pos = jnp.array([0, 4, 8], jnp.int32)
    mask = (jnp.arange(9)[None, :] <= pos[:, None])[:, None, None, :]
    fused = attention.fused_attention(q, k, v, False, pos + 1, implementation=None)
    np.testing.assert_allclose(fused, _ours(q, k, v, mask), atol=2e-6)


@pytest.fixture
def calls(monkeypatch):
    """jax.nn.dot_product_attention recorded, and run in its XLA form (no cuDNN on this CPU)."""
    seen, original = [], jax.nn.dot_product_attention

    def recorder(q, k, v, *args, implementation=None, **kw):
        seen.append({"implementation": implementation, "causal": kw.get("is_causal"),
                     "lengths": kw.get("key_value_seq_lengths") is not None, "q": q.shape, "k": k.shape})
        return original(q, k, v, *args, implementation=None, **kw)
    monkeypatch.setattr(jax.nn, "dot_product_attention", recorder)
    return seen


def _gpu(monkeypatch, paths="on"):
    """The GPU backend forced, with these fast paths (no cuDNN here: each test fakes the ones it takes)."""
    monkeypatch.setattr(kernels, "backend", lambda: "gpu")
    monkeypatch.setenv(kernels.GPU_ENV, paths)


def _hybrid(tiny_cfg, **changes):
    cfg = tiny_cfg.model.replace(dtype="bfloat16", memory="sequence", **changes)
    src = jnp.array([[5, 6, 7, 8, 9, 10], [11, 12, 13, 0, 0, 0]], jnp.int32)
    lengths = jnp.array([6, 3], jnp.int32)
    tgt = jnp.array([[1, 20, 21, 22, 23], [1, 30, 31, 32, 33]], jnp.int32)
    variables = get_model(cfg).init(jax.random.PRNGKey(0))
    return cfg, variables, (src, lengths, tgt)


def test_cudnn_attention_is_chosen_on_the_gpu_only_where_it_applies(tiny_cfg, monkeypatch, calls):
    cfg, variables, (src, lengths, tgt) = _hybrid(tiny_cfg)
    model = HybridSeq2Seq(cfg)
    forward = lambda v, *a: model.apply(v, *a)
    reference = jax.jit(forward)(variables, src, lengths, tgt)  # the CPU backend: our explicit softmax
    assert calls == []
    _gpu(monkeypatch, "attention")
    fused = jax.jit(lambda *a: forward(*a))(variables, src, lengths, tgt)  # a trace of its own
    # the encoder's padding mask (lengths) and the decoder's causal layers; cross-attention keeps ours
    assert [(c["implementation"], c["causal"], c["lengths"]) for c in calls] == \
        [("cudnn", False, True)] + [("cudnn", True, False)] * cfg.dec_layers
    assert float(jnp.max(jnp.abs(fused - reference))) < 0.1  # bf16 scores rounded differently
    calls.clear()
    with kernels.portable():  # an export never calls cuDNN
        jax.eval_shape(forward, variables, src, lengths, tgt)
    f32 = HybridSeq2Seq(cfg.replace(dtype="float32"))  # cuDNN's fused attention takes half precision only
    jax.eval_shape(lambda v: f32.apply(v, src, lengths, tgt), variables)
    monkeypatch.setenv(kernels.GPU_ENV, "off")
    jax.eval_shape(forward, variables, src, lengths, tgt)
    assert calls == []


def test_attention_dropout_keeps_the_explicit_path_in_training(tiny_cfg, monkeypatch, calls):
    cfg, variables, (src, lengths, tgt) = _hybrid(tiny_cfg, attention_dropout=0.1)
    model = HybridSeq2Seq(cfg)
    _gpu(monkeypatch, "attention")
    jax.eval_shape(lambda v: model.apply(v, src, lengths, tgt, train=True, rngs={"dropout": jax.random.PRNGKey(1)},
                                         mutable=["batch_stats"]), variables)
    # dot_product_attention has no dropout: the decoder trains with our softmax (the encoder's
    # attention has no dropout)
    assert len(calls) == 1 and not calls[0]["causal"]
    jax.eval_shape(lambda v: model.apply(v, src, lengths, tgt), variables)
    assert len(calls) == 2 + cfg.dec_layers  # evaluation takes it everywhere


def test_the_cached_decode_step_takes_cudnn_and_equals_the_full_forward(tiny_cfg, monkeypatch, calls):
    cfg, variables, (src, lengths, tgt) = _hybrid(tiny_cfg)
    model = HybridSeq2Seq(cfg)
    _gpu(monkeypatch, "attention")
    full = jax.jit(lambda v: model.apply(v, src, lengths, tgt))(variables)

    def cached(v):
        memory, mask = model.apply(v, src, lengths, method=model.encode)
        cache = model.apply(v, memory, mask, 8, src, method=model.init_cache)
        steps = []
        for t in range(tgt.shape[1]):
            logits, cache = model.apply(v, tgt[:, t:t + 1], cache, method=model.decode_step)
            steps.append(logits)
        return jnp.concatenate(steps, axis=1)
    calls.clear()
    steps = jax.jit(cached)(variables)
    decode = [c for c in calls if c["q"][1] == 1]
    assert len(decode) == tgt.shape[1] * cfg.dec_layers
    assert {(c["implementation"], c["k"][1], c["lengths"]) for c in decode} == {("cudnn", 8, True)}
    assert float(jnp.max(jnp.abs(steps - full))) < 0.1


# -- cuDNN's LSTM ----------------------------------------------------------------------------------
needs_rnn = pytest.mark.skipif(rnn is None, reason="this JAX has no jax.experimental.rnn")


def _stack(bidirectional=True, length_aware=True, layers=2):
    stack = RecurrentStack("lstm", 16, layers, bidirectional, length_aware=length_aware)
    x = jax.random.normal(jax.random.PRNGKey(3), (3, 6, 12))
    lengths = jnp.array([6, 4, 1], jnp.int32)
    return stack, nn.unbox(stack.init(jax.random.PRNGKey(4), x, lengths)), x, lengths


@needs_rnn
@pytest.mark.parametrize("bidirectional", [True, False])
def test_packed_weights_are_cudnns_layout_and_lstm_ref_equals_our_scan(bidirectional):
    stack, variables, x, lengths = _stack(bidirectional, layers=1)
    d = 2 if bidirectional else 1
    params = variables["params"]["l0"]
    weights = recurrent.cudnn_lstm_weights(params, d)
    packed = recurrent.pack_cudnn_weights(*weights)
    assert packed.shape == (rnn.get_num_params_in_lstm(12, 16, 1, bidirectional),)
    for ours, theirs in zip(weights, rnn.unpack_lstm_weights(packed, 12, 16, 1, bidirectional)):
        assert all(np.array_equal(ours[i], theirs[i]) for i in range(d))
    zeros = jnp.zeros((d, 3, 16))
    y, h, c = rnn.lstm_ref(x, zeros, zeros, *weights, lengths, 12, 16, 1, 0.0, bidirectional)
    outputs, _, (carry,) = stack.apply(variables, x, lengths)
    real = (jnp.arange(6)[None, :] < lengths[:, None])[..., None]
    np.testing.assert_allclose(jnp.where(real, outputs, 0), y, atol=1e-5)
    # the final carry: the same for a full row (the scan's runs on over padding, cuDNN's stops)
    np.testing.assert_allclose(carry[0][:, 0], h[:, 0], atol=1e-5)


@needs_rnn
@pytest.mark.parametrize("length_aware", [True, False])
def test_the_cudnn_lstm_path_equals_the_scan_with_its_gradient(monkeypatch, length_aware):
    stack, variables, x, lengths = _stack(length_aware=length_aware)
    real = (jnp.arange(6)[None, :] < lengths[:, None])[..., None] if length_aware else jnp.ones((3, 6, 1), bool)

    def loss(v):
        outputs, _, _ = stack.apply(v, x, lengths)
        return jnp.sum(jnp.where(real, jnp.sin(outputs), 0.0))
    scan_value, scan_grad = jax.jit(jax.value_and_grad(loss))(variables)
    seen = []
    monkeypatch.setattr(rnn, "lstm", lambda *a, **kw: seen.append(1) or _ref_lstm(*a, **kw))
    _gpu(monkeypatch)
    value, grad = jax.jit(jax.value_and_grad(loss))(variables)
    assert len(seen) == 2  # both layers
    np.testing.assert_allclose(value, scan_value, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(scan_grad)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def _ref_lstm(x, h0, c0, weights, seq, input_size, hidden_size, num_layers, dropout, bidirectional):
    unpacked = rnn.unpack_lstm_weights(weights, input_size, hidden_size, num_layers, bidirectional)
    return rnn.lstm_ref(x, h0, c0, *unpacked, seq, input_size, hidden_size, num_layers, dropout, bidirectional)


@needs_rnn
@pytest.mark.parametrize("memory", ["pooled", "sequence"])
def test_the_hybrid_with_cudnns_lstm_equals_the_scan(tiny_cfg, monkeypatch, memory):
    """Outputs at padded steps differ (zeros there): the model must never read them."""
    cfg = tiny_cfg.model.replace(memory=memory, copy=memory == "sequence")
    variables = get_model(cfg).init(jax.random.PRNGKey(0))
    src = jnp.array([[5, 6, 7, 8, 9, 10], [11, 12, 13, 0, 0, 0], [0, 0, 0, 0, 0, 0]], jnp.int32)
    lengths = jnp.array([6, 3, 0], jnp.int32)
    tgt = jnp.array([[1, 20, 21], [1, 30, 31], [1, 40, 41]], jnp.int32)
    model = HybridSeq2Seq(cfg)
    forward = lambda v: model.apply(v, src, lengths, tgt)
    scan = jax.jit(forward)(variables)
    calls = []
    monkeypatch.setattr(rnn, "lstm", lambda *a, **kw: calls.append(1) or _ref_lstm(*a, **kw))
    _gpu(monkeypatch, "lstm")
    fast = jax.jit(lambda v: forward(v))(variables)  # a trace of its own
    assert len(calls) == cfg.enc_layers
    np.testing.assert_allclose(fast, scan, atol=1e-5)
    calls.clear()
    with kernels.portable():
        jax.eval_shape(forward, variables)
    monkeypatch.setenv(kernels.GPU_ENV, "off")
    jax.eval_shape(forward, variables)
    assert calls == []


# -- CPU-only settings -----------------------------------------------------------------------------
def test_cpu_kernels_are_off_on_other_backends(tiny_cfg, monkeypatch):
    from nety_jax.decoding import LoopSpec, SamplingParams, generate
    cfg = tiny_cfg.model
    model = get_model(cfg)
    variables = model.init(jax.random.PRNGKey(0))
    src = jnp.full((2, 5), 7, jnp.int32)
    args = (variables, src, jnp.array([5, 3], jnp.int32), SamplingParams.create(2, top_k=5, seed=0))

    def program():
        fn = jax.jit(lambda *a: generate(*a, model=model, spec=LoopSpec(max_new_tokens=3)))
        return fn.lower(*args).as_text()
    if kernels.enabled():
        assert any(t in program() for t in kernels.TARGETS)  # the CPU program calls them
    _gpu(monkeypatch, "off")
    assert not kernels.enabled() and not any(t in program() for t in kernels.TARGETS)


def test_gpu_fast_path_setting():
    assert not kernels.gpu_path("attention")  # the CPU backend
    with pytest.raises(ValueError, match="unknown GPU fast path"):
        kernels.gpu_path("flash")


HOST = """
import json, sys
from nety_jax import runtime
applied = runtime.keep_host_memory()
import jax
print(json.dumps([applied, runtime.cpu_settings_apply(), jax.config.values["jax_cpu_enable_async_dispatch"]]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.parametrize("platforms,expected", [("cpu", [True, True, False]), ("cuda", [False, False, True]),
                                                ("tpu,cpu", [False, False, True])])
def test_host_malloc_and_synchronous_dispatch_are_for_the_cpu_only(platforms, expected):
    env = {**os.environ, "JAX_PLATFORMS": platforms, "PYTHONPATH": ROOT}
    done = subprocess.run([sys.executable, "-c", HOST], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == expected


def test_an_installed_accelerator_plugin_keeps_the_cpu_settings_off(monkeypatch):
    from nety_jax import runtime
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.delenv("JAX_PLATFORM_NAME", raising=False)
    monkeypatch.setattr(runtime, "_accelerator_plugins", lambda: ["jax_cuda13_plugin"])
    assert not runtime.cpu_settings_apply()
    monkeypatch.setattr(runtime, "_accelerator_plugins", lambda: [])
    assert runtime.cpu_settings_apply()


# -- mixed precision: model.dtype=bfloat16 -----------------------------------------------------------
def _dots(jaxpr, out):
    """(lhs dtype, rhs dtype, shapes) of every dot_general, nested jaxprs (scan, jit, vjp) included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            out.append((str(eqn.invars[0].aval.dtype), str(eqn.invars[1].aval.dtype),
                        eqn.invars[0].aval.shape, eqn.invars[1].aval.shape))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    _dots(inner, out)
    return out


def test_bfloat16_is_one_switch_for_mixed_precision():
    """float32 parameters, gradients and optimizer state; bfloat16 products (the tied output head
    too); float32 logits, softmax and loss."""
    from nety_jax.config import load_config
    from nety_jax.training.steps import create_train_state, train_step
    cfg = load_config(os.path.join(ROOT, "configs", "gpt_tiny.yaml"),
                      ["model.dtype=bfloat16", "model.vocab_size=64", "model.tie_output=true"])
    model = get_model(cfg.model)
    state = create_train_state(model, cfg.train, jax.random.PRNGKey(0))
    batch = model.example_batch(2, 8)
    step = lambda s, b: train_step(s, b, model=model, tcfg=cfg.train)
    new_state, metrics = jax.eval_shape(step, state, batch)
    leaves = jax.tree_util.tree_leaves((new_state.params, new_state.opt_state))
    assert {x.dtype for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)} == {jnp.dtype(jnp.float32)}
    assert metrics["loss_sum"].dtype == jnp.float32
    dots = _dots(jax.make_jaxpr(step)(state, batch).jaxpr, [])
    assert dots and all(a == b == "bfloat16" for a, b, _, _ in dots), [d for d in dots if d[0] != "bfloat16"]
    net = model.network()
    logits = jax.eval_shape(lambda v: net.apply(v, batch["tokens"]), {"params": state.params})
    assert logits.dtype == jnp.float32
