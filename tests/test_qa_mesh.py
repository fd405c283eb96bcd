"""QA: the mesh's batch axes (train.mesh_rules) must divide the batch: one line, not a traceback."""
from conftest import GPT_TINY, run_main


def test_a_batch_rule_whose_axes_do_not_divide_the_batch_is_one_line(tmp_path):
    """`batch=tensor` over tensor=4 with a batch of 6 passed the data x fsdp check (1 x 1) and
    failed inside JAX (IndivisibleError) at the first step."""
    result = run_main("train", "--config", GPT_TINY, "--workdir", tmp_path / "run", "--no-progress",
                      "--parallel", "mesh", "--set", "train.mesh_tensor=4", "--set", "train.batch_size=6",
                      "--set", "train.mesh_rules=[batch=tensor]", "--steps", "2", "--set", "train.warmup_steps=0")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "train.batch_size=6 must be divisible by the batch's mesh axes" in result.stderr
    assert "train.mesh_tensor=4" in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_fused_head_loss_runs_under_shard_map_in_eval_and_train():
    """`train --parallel shard_map` on a GPT failed at its first step or validation with a
    traceback: the fused head loss's scan started its carry device-invariant while its body made
    it vary over the batch axis. Sharded sums and gradients equal the one-device ones."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, PartitionSpec as P
    from nety_jax.layers.losses import head_cross_entropy_sums
    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.normal(size=(8, 5, 16)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(16, 30)) * 0.1, jnp.float32)
    b = jnp.asarray(rng.normal(size=(30,)) * 0.1, jnp.float32)
    t = jnp.asarray(rng.integers(0, 30, (8, 5)), jnp.int32)
    m = jnp.asarray(rng.random((8, 5)) > 0.2, jnp.float32)
    nll = lambda w, b, h, t, m: head_cross_entropy_sums(h, w, b, t, m, rows=8)["nll_sum"]
    mesh = Mesh(np.asarray(jax.devices()), ("batch",))
    specs = (P(), P(), P("batch"), P("batch"), P("batch"))

    def sharded_eval(w, b, h, t, m):
        return jax.lax.psum(nll(w, b, h, t, m), "batch")

    def sharded_grad(w, b, h, t, m):
        w, b = jax.lax.pcast((w, b), "batch", to="varying")  # as train_step marks its parameters
        return jax.lax.psum(jax.grad(nll, argnums=(0, 1))(w, b, h, t, m), "batch")

    value = jax.jit(jax.shard_map(sharded_eval, mesh=mesh, in_specs=specs, out_specs=P()))(w, b, h, t, m)
    grads = jax.jit(jax.shard_map(sharded_grad, mesh=mesh, in_specs=specs, out_specs=P()))(w, b, h, t, m)
    np.testing.assert_allclose(value, nll(w, b, h, t, m), rtol=1e-5)
    for got, want in zip(grads, jax.grad(nll, argnums=(0, 1))(w, b, h, t, m)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
