"""The numerics on whatever device JAX runs on: the GPU subset that scripts/gpu_check.sh runs.

scripts/gpu_check.sh sets $NETY_GPU_CHECK to the platform it expects ("gpu" there) and runs this
file on the GPU; the ordinary suite runs it on the CPU. Each test checks the device its arrays
land on.
"""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nety_jax import kernels
from nety_jax.config import load_config
from nety_jax.models import get_model
from conftest import GPT_TINY, PARITY, QUIET, TINY

PLATFORM = os.environ.get("NETY_GPU_CHECK", "cpu")
ON_GPU = PLATFORM == "gpu"
gpu_only = pytest.mark.skipif(not ON_GPU, reason="cuDNN runs on the GPU only")


def _on_device(x):
    platforms = {d.platform for d in x.devices()}
    assert platforms == {PLATFORM}, f"arrays on {platforms}, expected {PLATFORM}"
    return x


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.all(np.isfinite(a)), "non-finite values"
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def test_the_backend_is_the_expected_one():
    assert jax.default_backend() == PLATFORM and kernels.backend() == PLATFORM
    if ON_GPU:
        assert not kernels.enabled()  # our CPU kernels: the CPU backend only


def test_parity_with_pytorch_nety_on_the_device():
    torch = pytest.importorskip("torch")
    from nety_jax.models.hybrid import torch_io
    from nety_jax.models.hybrid.network import HybridSeq2Seq
    from nety_torch_reference import HybridRNNTransformer
    device = "cuda" if ON_GPU else "cpu"
    cfg = load_config(PARITY, ["model.vocab_size=64", "model.d_model=64", "model.enc_hidden=32",
                               "model.enc_layers=2", "model.enc_heads=4", "model.dec_heads=8",
                               "model.dec_layers=2", "model.d_ff=96", "model.max_len=64"])
    m = cfg.model
    torch.manual_seed(0)
    nety = HybridRNNTransformer(m.vocab_size, m.d_model, m.enc_hidden, m.enc_layers, m.enc_heads, m.dec_heads,
                                m.dec_layers, m.d_ff, 0.1, m.max_len).eval().to(device)
    sd = {k: v.detach().cpu().numpy() for k, v in nety.state_dict().items()}
    variables = torch_io.from_torch_arrays(sd, cfg)
    g = torch.Generator().manual_seed(1)
    src, tgt = torch.randint(4, 64, (6, 9), generator=g), torch.randint(4, 64, (6, 7), generator=g)
    src[2, 5:] = 0
    with torch.no_grad():
        ref = nety(src.to(device), tgt.to(device)).float().cpu().numpy()
    lengths = jnp.full((6,), 9, jnp.int32)
    with jax.default_matmul_precision("highest"):  # float32 products on both sides (no TF32)
        ours = jax.jit(lambda v: HybridSeq2Seq(m).apply(v, jnp.asarray(src.numpy()), lengths,
                                                          jnp.asarray(tgt.numpy())))(variables)
    assert _rel(_on_device(ours), ref) < 1e-4


def _hybrid(dtype: str, **sets):
    cfg = load_config(TINY, [f"model.dtype={dtype}", "model.memory=sequence", "model.copy=true",
                             *(f"model.{k}={v}" for k, v in sets.items())])
    return cfg.model


def _batch(vocab=64):
    rs = np.random.default_rng(0)
    src = rs.integers(4, vocab, (4, 11)).astype(np.int32)
    lengths = np.array([11, 7, 3, 1], np.int32)
    for i, n in enumerate(lengths):
        src[i, n:] = 0
    return jnp.asarray(src), jnp.asarray(lengths), jnp.asarray(rs.integers(4, vocab, (4, 5)).astype(np.int32))


@pytest.mark.parametrize("dtype,tolerance", [("float32", 1e-4), ("bfloat16", 3e-2)])
def test_cached_decoding_equals_the_full_forward(dtype, tolerance):
    cfg = load_config(GPT_TINY, ["model.vocab_size=64", f"model.dtype={dtype}"]).model
    model = get_model(cfg)
    variables = model.init(jax.random.PRNGKey(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(4, 64, (4, 8)), jnp.int32)
    lengths = jnp.array([3, 3, 3, 3], jnp.int32)
    net = model.network()

    def both(v):
        full = net.apply(v, tokens)
        first, cache = model.start_decoding(v, tokens[:, :3], lengths, tokens.shape[1])
        steps = [first]
        for t in range(3, tokens.shape[1]):
            logits, cache = model.decode_step(v, tokens[:, t], cache)
            steps.append(logits)
        return full[:, 2:], jnp.stack(steps, axis=1)
    # float32: products in float32 on both sides; a GPU's default is TF32 (10-bit mantissa), where
    # the two orders of summation differ past this bound (docs/PERFORMANCE.md): TF32, not the cache
    with jax.default_matmul_precision("highest" if dtype == "float32" else "default"):
        full, cached = jax.jit(both)(variables)
    assert _rel(_on_device(cached), full) < tolerance


@pytest.mark.parametrize("arch", ["hybrid", "gpt"])
def test_bfloat16_logits_stay_within_tolerance_of_float32(arch):
    if arch == "gpt":
        cfg = load_config(GPT_TINY, ["model.vocab_size=64"]).model
        args = (jnp.asarray(np.random.default_rng(0).integers(4, 64, (4, 16)), jnp.int32),)
    else:
        cfg, args = _hybrid("float32"), _batch()
    variables = get_model(cfg).init(jax.random.PRNGKey(0))
    f32, bf16 = (get_model(cfg.replace(dtype=d)).network() for d in ("float32", "bfloat16"))
    with jax.default_matmul_precision("highest"):
        ref = jax.jit(lambda v: f32.apply(v, *args))(variables)
    got = jax.jit(lambda v: bf16.apply(v, *args))(variables)
    assert got.dtype == jnp.float32
    assert _rel(_on_device(got), ref) < 2e-2  # bfloat16 operands: between 1e-3 and 1e-2 per product


def test_a_multi_step_training_run_lowers_the_loss(tmp_path):
    from nety_jax.training.loop import train
    from nety_jax.training.metrics import read_metrics
    cfg = load_config(GPT_TINY, ["train.steps=40", "train.log_every=10", "train.eval_every=40",
                                 "train.checkpoint_every=40", "train.warmup_steps=5", "model.dtype=bfloat16" if ON_GPU else "model.dtype=float32"])
    summary = train(cfg, str(tmp_path / "run"), **QUIET)
    losses = [r["loss"] for r in read_metrics(str(tmp_path / "run")) if r["split"] == "train"]
    assert summary["status"] == "finished" and np.all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < np.mean(losses[:2]) - 0.5, losses


def test_the_exported_artifact_loads_and_generates_on_the_device(tmp_path):
    from nety_jax.serving.export import export_run, load_exported
    from nety_jax.training.loop import train
    cfg = load_config(TINY, ["train.steps=4", "train.warmup_steps=1", "train.eval_every=4",
                             "train.checkpoint_every=4", "data.vocab_size=120"])
    run = str(tmp_path / "run")
    train(cfg, run, **QUIET)
    exported = load_exported(export_run(run, str(tmp_path / "export")))
    assert PLATFORM.replace("gpu", "cuda") in exported.exported.platforms
    tokens, lengths, scores = exported.exported.call(
        *_export_args(exported, np.array([[5, 6, 7, 8], [9, 10, 0, 0]], np.int32), np.array([4, 2], np.int32)))
    _on_device(tokens)
    assert tokens.shape[0] == 2 and np.all(np.asarray(lengths) >= 0) and np.all(np.isfinite(scores))
    replies = exported.generate(["Bonjour !", "Ça va ?"], seed=0)
    assert len(replies) == 2 and all(isinstance(r[0], str) for r in replies)


def _export_args(exported, tokens, lengths):
    from nety_jax.decoding.keys import row_keys
    b = len(tokens)
    d = exported.info["defaults"]
    row = lambda v, dtype: jnp.full((b,), v, dtype)
    return (exported.variables, jnp.asarray(tokens), jnp.asarray(lengths), row(d["temperature"], jnp.float32),
            row(d["top_k"], jnp.int32), row(d["top_p"], jnp.float32), row(d["max_new_tokens"], jnp.int32),
            jnp.asarray(row_keys(0, b, 0), jnp.uint32))


# -- the fast paths on the GPU itself ------------------------------------------------------------
@gpu_only
def test_cudnn_fused_attention_is_in_the_program_and_equals_xla():
    from nety_jax.layers import attention
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    q, k, v = (jax.random.normal(key, (4, 128, 8, 64), jnp.bfloat16) for key in keys)
    lengths = jnp.array([128, 100, 17, 1], jnp.int32)
    for causal, kv in ((True, None), (False, lengths)):
        fused = jax.jit(lambda q, k, v: attention.fused_attention(q, k, v, causal, kv))
        assert "cudnn" in fused.lower(q, k, v).compile().as_text().lower()
        ref = attention.fused_attention(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32),
                                        causal, kv, implementation="xla")
        assert _rel(fused(q, k, v), ref) < 2e-2


@gpu_only
@pytest.mark.parametrize("length_aware", [True, False])
def test_cudnn_lstm_equals_the_scan_on_the_gpu(monkeypatch, length_aware):
    from nety_jax.layers import RecurrentStack
    stack = RecurrentStack("lstm", 64, 2, True, length_aware=length_aware)
    x = jax.random.normal(jax.random.PRNGKey(3), (8, 20, 48))
    lengths = jnp.array([20, 19, 12, 7, 5, 3, 1, 0], jnp.int32)
    variables = nn.unbox(stack.init(jax.random.PRNGKey(4), x, lengths))
    real = (jnp.arange(20)[None, :] < (lengths if length_aware else 20 + 0 * lengths)[:, None])[..., None]

    def loss(v):
        return jnp.sum(jnp.where(real, jnp.sin(stack.apply(v, x, lengths)[0]), 0.0))
    with jax.default_matmul_precision("highest"):
        fast = jax.jit(jax.value_and_grad(loss))
        assert "cudnn" in fast.lower(variables).compile().as_text().lower()
        value, grad = fast(variables)
        monkeypatch.setenv(kernels.GPU_ENV, "off")
        ref_value, ref_grad = jax.jit(jax.value_and_grad(lambda v: loss(v)))(variables)
    assert _rel(value, ref_value) < 1e-4
    assert _rel(jnp.concatenate([g.ravel() for g in jax.tree_util.tree_leaves(grad)]),
                jnp.concatenate([g.ravel() for g in jax.tree_util.tree_leaves(ref_grad)])) < 1e-3
