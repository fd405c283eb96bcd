"""The device mesh (train.parallel=mesh) on the suite's 4 fake CPU devices: every mesh trains the
parameters of the 1-device run, and sharding shrinks the per-device state as 1/(fsdp x tensor)."""
import jax
import numpy as np
import pytest

from conftest import GPT_TINY, RNN_LM, TINY
from nety_jax.config import load_config
from nety_jax.errors import ConfigError
from nety_jax.models import get_model
from nety_jax.training import mesh as meshlib
from nety_jax.training.parallel import Runner

# Adam's update is lr * m / (sqrt(v) + eps): with eps=1e-9 a gradient near zero moves its weight
# by +-lr whatever its float rounding, so two correct programs differ by whole steps. eps=1e-3
# makes the update continuous in the gradient: the comparison then tests the gradients.
COMMON = ["train.eps=1e-3", "train.warmup_steps=0", "train.schedule=constant", "train.batch_size=8",
          "train.learning_rate=1e-2"]
MODELS = {
    "hybrid": (TINY, ["model.vocab_size=64", "model.enc_layers=1", "model.dec_layers=1", "model.head_dims=[16]"]),
    "gpt": (GPT_TINY, ["model.vocab_size=64", "model.d_model=32", "model.d_ff=64", "model.layers=1",
                       "model.max_len=32"]),
    "rnn_lm": (RNN_LM, ["model.vocab_size=64", "model.d_model=32", "model.hidden=32"]),  # dropout 0.1
}
MESHES = {"data=2,fsdp=2": ["train.mesh_fsdp=2"],  # (mesh_data=-1 takes the 2 devices left)
          "fsdp=2,tensor=2": ["train.mesh_data=1", "train.mesh_fsdp=2", "train.mesh_tensor=2"]}
SPLIT = {"data=2,fsdp=2": 2, "fsdp=2,tensor=2": 4}  # fsdp x tensor
# Compiling is the cost (the hybrid's step is the slowest): every architecture runs the mesh of
# both sharded axes; the RNN LM (with dropout) the data x FSDP mesh too.
MESHES_OF = {"hybrid": ["fsdp=2,tensor=2"], "gpt": ["fsdp=2,tensor=2"], "rnn_lm": list(MESHES)}
STEPS = 2


def _batches(model, n: int, b: int = 8, t: int = 8) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        batch = {}
        for key, x in model.example_batch(b, t).items():
            low, high = (1, t + 1) if key.endswith("_len") else (0, model.cfg.vocab_size)
            batch[key] = rng.integers(low, high, size=x.shape).astype(np.int32)
        out.append(batch)
    return out


def _train(path: str, overrides: list[str]):
    cfg = load_config(path, overrides)
    model = get_model(cfg.model)
    runner = Runner(cfg, model)
    state = runner.place_state(runner.create_state(model, cfg.train, jax.random.PRNGKey(0)))
    for batch in _batches(model, STEPS):
        state, _ = runner.train(state, batch)
    return state


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_every_mesh_trains_the_one_device_parameters_in_shards(arch):
    path, sizes = MODELS[arch]
    reference = _train(path, COMMON + sizes + ["train.parallel=none"])
    full = meshlib.bytes_per_device((reference.params, reference.opt_state))
    for name in MESHES_OF[arch]:
        state = _train(path, COMMON + sizes + ["train.parallel=mesh"] + MESHES[name])
        for ref, got in zip(jax.tree_util.tree_leaves(reference.params), jax.tree_util.tree_leaves(state.params)):
            np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5, rtol=0, err_msg=name)
        shrink = full / meshlib.bytes_per_device((state.params, state.opt_state))
        assert abs(shrink / SPLIT[name] - 1) < 0.1, (name, shrink)


def test_the_mesh_size_must_match_the_devices():
    cfg = load_config(GPT_TINY, ["train.parallel=mesh", "train.mesh_fsdp=3"])
    with pytest.raises(ConfigError, match=r"train.mesh_fsdp=3 x train.mesh_tensor=1 does not divide the 4"):
        Runner(cfg, get_model(cfg.model))
    cfg = load_config(GPT_TINY, ["train.parallel=mesh", "train.mesh_data=1", "train.mesh_fsdp=2"])
    with pytest.raises(ConfigError, match=r"train.mesh_data=1 x .* = 2 must equal the number of devices \(4\)"):
        Runner(cfg, get_model(cfg.model))
    with pytest.raises(ConfigError, match="set train.parallel=mesh"):
        load_config(GPT_TINY, ["train.mesh_tensor=2"])
    with pytest.raises(ConfigError, match=r"train.mesh_rules: 'embed=fsdp\+gpu' must read NAME=AXIS"):
        load_config(GPT_TINY, ["train.parallel=mesh", "train.mesh_rules=[embed=fsdp+gpu]"])
    cfg = load_config(GPT_TINY, ["train.parallel=mesh", "train.mesh_rules=[width=fsdp]"])
    with pytest.raises(ConfigError, match="unknown logical axis 'width'"):
        Runner(cfg, get_model(cfg.model))


def test_every_parameter_has_logical_names():
    for path, sizes in MODELS.values():
        names = get_model(load_config(path, sizes).model).logical_axes()["params"]
        specs = jax.tree_util.tree_leaves(names, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
        assert specs and all(len(s) for s in specs)


def test_a_sharded_checkpoint_restores_onto_another_mesh_and_one_device(tmp_path):
    from nety_jax.runs import checkpoints as ckpt
    path, sizes = MODELS["gpt"]
    saved_cfg = load_config(path, sizes + ["train.parallel=mesh", "train.mesh_data=1", "train.mesh_fsdp=2",
                                           "train.mesh_tensor=2"])
    model = get_model(saved_cfg.model)
    state = Runner(saved_cfg, model).create_state(model, saved_cfg.train, jax.random.PRNGKey(0))
    manager = ckpt.make_manager(str(tmp_path), saved_cfg)
    ckpt.save(manager, 1, state, {"step": 1})
    manager.wait_until_finished()
    expected = jax.tree_util.tree_map(np.asarray, (state.params, state.opt_state))
    for overrides in (["train.parallel=mesh", "train.mesh_fsdp=4"], ["train.parallel=none"]):
        cfg = load_config(path, sizes + overrides)
        runner = Runner(cfg, model)
        target = ckpt.abstract_of(runner.create_state(model, cfg.train, jax.random.PRNGKey(1)))
        restored, _ = ckpt.restore_state(manager, 1, target)
        for want, got in zip(jax.tree_util.tree_leaves(expected),
                             jax.tree_util.tree_leaves((restored.params, restored.opt_state))):
            np.testing.assert_array_equal(np.asarray(got), want)
        kernel = restored.params["fc_out"]["kernel"]
        assert kernel.sharding.is_equivalent_to(target.params["fc_out"]["kernel"].sharding, 2), overrides
        assert len(kernel.sharding.device_set) == (4 if "train.mesh_fsdp=4" in overrides else 1)
    manager.close()
