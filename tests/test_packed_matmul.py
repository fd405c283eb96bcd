"""The batched decode product from packed weight panels (``kernels.matmul_packed``) and the
generation path that packs them once per call (``kernels.with_packed``)."""
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nety_jax import kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++") or os.environ.get("CXX")),
                                reason="the kernels are built with the machine's C++ compiler")


def _needs_matmul():
    if not (kernels.load() and kernels._state["matmul"]):
        pytest.skip("nety_matmul needs AVX-512 (Linear keeps XLA's product without it)")


def test_packed_product_is_bit_identical_to_the_unpacked_kernel():
    _needs_matmul()
    rs = np.random.default_rng(7)
    # full panels and blocks; row tails; a last partial panel; fewer columns than one panel;
    # K over one 512-deep pass of the unpacked kernel (its stored and reloaded sums)
    for m, k, n in [(64, 96, 144), (61, 33, 100), (57, 5, 47), (72, 1100, 97)]:
        x = jnp.asarray(rs.standard_normal((m, k)), jnp.float32)
        w = jnp.asarray(rs.standard_normal((k, n)), jnp.float32)
        packed = kernels.pack_panels(w)
        assert packed.shape == (n // kernels.PANEL, k, kernels.PANEL)
        got = np.asarray(jax.jit(kernels.matmul_packed)(x, packed, w))
        np.testing.assert_array_equal(got, np.asarray(jax.jit(kernels.matmul)(x, w)), err_msg=str((m, k, n)))
        np.testing.assert_allclose(got, np.asarray(x, np.float64) @ np.asarray(w, np.float64), rtol=1e-4,
                                   atol=1e-3)


def test_generation_packs_the_weights_and_draws_the_same_tokens(monkeypatch):
    """A batch in ``MATMUL_ROWS``: the loop's products read packed panels (made before the
    loop, not in its body), and the tokens and scores equal those of the unpacked kernel."""
    _needs_matmul()
    from nety_jax.config import load_config
    from nety_jax.decoding import LoopSpec, SamplingParams, generate, generation
    from nety_jax.models import get_model
    monkeypatch.setattr(kernels, "_cores", lambda: 2)
    model = get_model(load_config(os.path.join(ROOT, "configs", "gpt_tiny.yaml"), ["model.vocab_size=96"]).model)
    variables = model.init(jax.random.PRNGKey(0))
    rows = kernels.MATMUL_ROWS[0]
    packed = kernels.with_packed(variables, rows)["packed"]
    assert packed["fc_out"]["kernel"].shape == (2, 64, kernels.PANEL)  # 96 = 2 panels
    assert "kernel" in packed["layers_0"]["ffn"]["linear1"]
    assert kernels.with_packed(variables, kernels.MATVEC_ROWS) is variables  # nety_matvec's rows
    rs = np.random.default_rng(2)
    args = (variables, jnp.asarray(rs.integers(4, 96, (rows, 5)), jnp.int32), jnp.full((rows,), 5, jnp.int32),
            SamplingParams.create(rows, temperature=1.0, top_k=20, seed=3))
    short = LoopSpec(max_new_tokens=generation.PACK_MIN_TOKENS - 1, ignore_eos=True)
    assert kernels.MATMUL_PACKED_TARGET not in jax.jit(  # a few steps do not repay the copy
        lambda v, t, l, p: generate(v, t, l, p, model=model, spec=short)).lower(*args).as_text()
    spec = LoopSpec(max_new_tokens=generation.PACK_MIN_TOKENS, ignore_eos=True)
    fn = lambda v, t, l, p: generate(v, t, l, p, model=model, spec=spec)  # noqa: E731
    compiled = jax.jit(fn).lower(*args).compile().as_text()
    assert kernels.MATMUL_PACKED_TARGET in compiled
    packing = [line for line in compiled.splitlines() if re.search(r"f32\[\d+,64,48\]\S* (transpose|copy)\(", line)]
    assert packing and not [line for line in packing if "/while/" in line]  # once, outside the loop
    got = jax.jit(fn)(*args)
    monkeypatch.setattr(kernels, "with_packed", lambda v, r: v)
    plain = jax.jit(lambda v, t, l, p: generate(v, t, l, p, model=model, spec=spec))
    assert kernels.MATMUL_PACKED_TARGET not in plain.lower(*args).as_text()
    want = plain(*args)
    np.testing.assert_array_equal(np.asarray(got["tokens"]), np.asarray(want["tokens"]))
    np.testing.assert_array_equal(np.asarray(got["scores"]), np.asarray(want["scores"]))
