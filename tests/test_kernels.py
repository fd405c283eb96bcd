"""Our CPU kernels (nety_jax.kernels) against XLA's own operations, computed the portable way."""
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nety_jax import kernels
from nety_jax.layers.attention import attention_weights, weighted_values

needs_compiler = pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++") or os.environ.get("CXX")),
                                    reason="the kernels are built with the machine's C++ compiler")


@needs_compiler
def test_int8_kernel_equals_xla_widened_product():
    from nety_jax.layers.linear import quantize_kernel
    assert kernels.load()  # CI has a compiler: a build failure must fail here
    rs = np.random.default_rng(0)
    for rows, k, n in [(1, 64, 48), (2, 13, 37), (3, 512, 130), (4, 7, 16), (6, 33, 200)]:  # tails of k and n
        q, scale = quantize_kernel(rs.standard_normal((k, n)).astype(np.float32))
        x = jnp.asarray(rs.standard_normal((rows, k)), jnp.float32)
        want = (x @ jnp.asarray(q, jnp.float32)) * scale
        got = jax.jit(kernels.int8_matmul)(x, jnp.asarray(q), jnp.asarray(scale))
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    batched = jax.vmap(kernels.int8_matmul, in_axes=(0, None, None))(x[:, None], jnp.asarray(q), scale)
    np.testing.assert_allclose(np.asarray(batched[:, 0]), np.asarray(want), rtol=1e-5, atol=1e-5)


@needs_compiler
def test_int8_linear_uses_the_kernel_for_few_rows_and_never_in_exports():
    from nety_jax.layers import Linear
    layer = Linear(24, quant="int8")
    variables = layer.init(jax.random.PRNGKey(0), jnp.ones((1, 16)))
    text = lambda rows: jax.jit(layer.apply).lower(variables, jnp.ones((rows, 16))).as_text()
    assert kernels.TARGET in text(1) and kernels.TARGET in text(kernels.MAX_ROWS)
    assert kernels.TARGET not in text(kernels.MAX_ROWS + 1)  # XLA's GEMM for larger batches
    assert kernels.TARGET not in jax.jit(Linear(24).apply).lower(
        Linear(24).init(jax.random.PRNGKey(0), jnp.ones((1, 16))), jnp.ones((1, 16))).as_text()
    with kernels.portable():
        exported = jax.export.export(jax.jit(layer.apply), platforms=("cpu",))(
            variables, jax.ShapeDtypeStruct((1, 16), jnp.float32))
    assert kernels.TARGET not in exported.mlir_module()


@needs_compiler
def test_top_k_kernel_equals_lax_top_k_exactly():
    rs = np.random.default_rng(1)
    cases = [((64, 8000), 64), ((3, 1000), 1), ((2, 37), 37), ((5, 20), 7), ((4, 4099), 50)]
    for shape, k in cases:
        x = rs.standard_normal(shape).astype(np.float32)
        x[:, 7] = x[:, 3]  # ties go to the lower index
        x[0, :5] = [-np.inf, np.inf, -0.0, 0.0, np.nan]  # IEEE total order, as XLA's TopK
        x = jnp.asarray(x)
        want = jax.lax.top_k(x, k)
        got = jax.jit(kernels.top_k, static_argnums=1)(x, k)
        np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
        np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))
    coarse = jnp.asarray(np.round(rs.standard_normal((8, 600)) * 2), jnp.float32)  # many ties
    np.testing.assert_array_equal(np.asarray(kernels.top_k(coarse, 64)[1]), np.asarray(jax.lax.top_k(coarse, 64)[1]))
    lowered = jax.jit(lambda x: kernels.top_k(x, 4)).lower(x).as_text()
    assert kernels.TOP_K_TARGET in lowered
    with kernels.portable():
        assert kernels.TOP_K_TARGET not in jax.jit(lambda x: kernels.top_k(x, 4)).lower(x).as_text()


@needs_compiler
def test_decode_attention_kernel_equals_masked_attention():
    rs = np.random.default_rng(2)
    for b, h, length, d in [(5, 4, 37, 64), (3, 2, 20, 24), (2, 8, 64, 64)]:
        q, k, v = (jnp.asarray(rs.standard_normal(s), jnp.float32)
                   for s in [(b, h, 1, d), (b, h, length, d), (b, h, length, d)])
        filled = jnp.asarray(rs.integers(1, length + 1, b), jnp.int32).at[0].set(1).at[-1].set(length)
        mask = (jnp.arange(length)[None, :] < filled[:, None])[:, None, None, :]
        want = weighted_values(attention_weights(q, k, mask), v)
        got = jax.jit(kernels.decode_attention)(q, k, v, filled)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-6)
    assert kernels.decode_attention_usable(q, k)
    assert not kernels.decode_attention_usable(jnp.zeros((b, h, 2, d)), k)  # a prompt of 2 tokens: XLA


@needs_compiler
def test_generation_calls_the_kernels_and_an_export_after_it_stays_portable(tiny_cfg):
    """In-process generation uses the top-k and attention kernels; an export traced later in the
    same process (under ``portable()``) has none, and draws the same tokens."""
    import functools
    from nety_jax.decoding import LoopSpec, SamplingParams, generate, generate_jit
    from nety_jax.models import get_model
    model = get_model(tiny_cfg.model)
    variables = model.init(jax.random.PRNGKey(0))
    rs = np.random.default_rng(3)
    args = (variables, jnp.asarray(rs.integers(4, 64, (3, 7)), jnp.int32), jnp.asarray([7, 4, 1], jnp.int32),
            SamplingParams.create(3, temperature=[0.0, 0.8, 1.0], top_k=[0, 5, 0], top_p=[1.0, 0.9, 0.8], seed=4))
    spec = LoopSpec(max_new_tokens=6, ignore_eos=True)
    text = generate_jit.lower(*args, model=model, spec=spec).as_text()
    assert kernels.TOP_K_TARGET in text and kernels.ATTENTION_TARGET in text
    ours = generate_jit(*args, model=model, spec=spec)
    with kernels.portable():
        exported = jax.export.export(jax.jit(functools.partial(generate, model=model, spec=spec)),
                                     platforms=("cpu",))(*args)
    assert not [t for t in kernels.TARGETS if t in exported.mlir_module()]
    np.testing.assert_array_equal(np.asarray(exported.call(*args)["tokens"]), np.asarray(ours["tokens"]))


@needs_compiler
def test_matmul_kernel_equals_xla_product_and_its_gradient():
    assert kernels.load()
    if not kernels._state["matmul"]:
        pytest.skip("nety_matmul needs AVX-512 (Linear keeps XLA's product without it)")
    rs = np.random.default_rng(5)
    # full 8 x 48 blocks, row tails, a last partial panel, fewer columns than one panel, odd K,
    # several 512-deep passes with and without row tails
    for m, k, n in [(64, 512, 1536), (37, 64, 200), (50, 7, 17), (96, 300, 96), (48, 2048, 520), (53, 1100, 100)]:
        x = jnp.asarray(rs.standard_normal((m, k)), jnp.float32)
        w = jnp.asarray(rs.standard_normal((k, n)), jnp.float32)
        want = jnp.dot(x, w, precision="highest")
        got = jax.jit(kernels.matmul)(x, w)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-4, err_msg=str((m, k, n)))
    x3 = x.reshape(1, m, k)  # leading axes flatten into rows
    np.testing.assert_allclose(np.asarray(kernels.matmul(x3, w))[0], np.asarray(want), rtol=2e-5, atol=2e-4)
    x, w = x[:, :64] / 8, w[:64, :] / 8  # gradients at a size where the forwards agree to ~1e-6
    loss = lambda f: (lambda x, w: jnp.sum(jnp.tanh(f(x, w))))
    got = jax.grad(loss(kernels.matmul), argnums=(0, 1))(x, w)
    want = jax.grad(loss(lambda x, w: jnp.dot(x, w, precision="highest")), argnums=(0, 1))(x, w)
    for a, b in zip(got, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


@needs_compiler
def test_linear_uses_the_matmul_kernel_for_a_decode_batch_only(monkeypatch):
    from nety_jax.layers import Linear
    if not (kernels.load() and kernels._state["matmul"]):
        pytest.skip("nety_matmul needs AVX-512 (Linear keeps XLA's product without it)")
    monkeypatch.setattr(kernels, "_cores", lambda: 2)
    layer = Linear(24)
    variables = layer.init(jax.random.PRNGKey(0), jnp.ones((1, 16)))
    text = lambda rows: jax.jit(layer.apply).lower(variables, jnp.ones((rows, 16))).as_text()
    low, high = kernels.MATMUL_ROWS
    assert kernels.MATMUL_TARGET in text(low) and kernels.MATMUL_TARGET in text(high)
    assert kernels.MATMUL_TARGET not in text(low - 1) and kernels.MATMUL_TARGET not in text(high + 1)
    with kernels.portable():
        assert kernels.MATMUL_TARGET not in text(low)
    monkeypatch.setattr(kernels, "_cores", lambda: 16)  # more cores than 8-row blocks: XLA's GEMM
    assert kernels.MATMUL_TARGET not in text(120) and kernels.MATMUL_TARGET in text(128)
    monkeypatch.setattr(kernels, "_cores", lambda: 2)
    x = jnp.asarray(np.random.default_rng(6).standard_normal((low, 16)), jnp.float32)
    with kernels.portable():
        want = layer.apply(variables, x)
    np.testing.assert_allclose(np.asarray(jax.jit(layer.apply)(variables, x)), np.asarray(want),
                               rtol=1e-5, atol=1e-5)
