"""The memory planner (training/memory.py): figures per device, refusals with a fix, `nety-jax plan`.

gpt_tiny at batch 8 x 16 (float32, AdamW): 605.5 KB of parameters, 1.18 MB of optimizer
state, so 2.4 MB with the gradients replicated; the compiled step holds about 4 MB on one
device and about 1.9 MB per device with fsdp=4 (the 4 fake devices of conftest.py).
"""
import os

import pytest

from conftest import GPT_TINY, QUIET, TINY
from nety_jax.config import load_config
from nety_jax.errors import ConfigError
from nety_jax.training import memory

SMALL = ["train.batch_size=8", "data.seq_len=16"]
LIMIT_2_2_MB = f"train.memory_limit_gb={2.2 / 1024:.6f}"
FSDP4 = ["train.parallel=mesh", "train.mesh_fsdp=4"]


def _params(cfg) -> int:
    from nety_jax.models import get_model
    from nety_jax.models.base import count_params
    return count_params(get_model(cfg.model.replace(vocab_size=cfg.data.vocab_size)).abstract_variables()["params"])


def test_plan_figures_shrink_with_fsdp():
    """Each parameter's and moment's shard on one device: a quarter of the float32 bytes, but for
    the dimensions 4 does not divide (kept whole); the compiled step's figures on top."""
    cfg = load_config(GPT_TINY, SMALL + FSDP4)
    four, params = memory.plan_config(cfg), _params(cfg)
    assert 4 * params / 4 <= four.parameters < 1.05 * 4 * params / 4
    assert four.optimizer == pytest.approx(2 * four.parameters, abs=64)  # Adam's two moments (+ counts)
    assert four.source == "the compiled step's memory analysis" and four.working > four.parameters
    assert four.limit_source.endswith("/ 4 CPU devices")


def test_replicated_state_refused_before_compiling_and_fsdp_fits(monkeypatch):
    compiled = []
    monkeypatch.setattr(memory, "compiled_stats", lambda *a: compiled.append(1))
    with pytest.raises(ConfigError) as e:
        memory.plan_config(load_config(GPT_TINY, SMALL + [LIMIT_2_2_MB]))
    msg = str(e.value)
    assert "\n" not in msg and not compiled
    assert msg.startswith("the train state does not fit") and "of 2.20 MB (train.memory_limit_gb=" in msg
    assert "train.parallel=mesh --set train.mesh_fsdp=4" in msg
    monkeypatch.undo()
    plan = memory.plan_config(load_config(GPT_TINY, SMALL + FSDP4 + [LIMIT_2_2_MB]))
    assert plan.fits() and plan.total <= plan.limit


def test_analytic_estimate_where_the_backend_gives_none(monkeypatch):
    monkeypatch.setattr(memory, "compiled_stats", lambda *a: None)
    plan = memory.plan_config(load_config(GPT_TINY, SMALL))
    assert plan.source.startswith("analytic")
    # the backward pass keeps at least each layer's input (8 x 16 x 64 float32 per layer)
    assert plan.working > plan.parameters + 2 * 8 * 16 * 64 * 4
    hybrid = memory.plan_config(load_config(TINY, ["train.batch_size=8"]))  # BatchNorm statistics too
    assert hybrid.source.startswith("analytic") and hybrid.working > hybrid.parameters


def test_train_refuses_before_the_first_step(tmp_path, monkeypatch):
    """The loop plans the compiled step before running it (its figures faked here: compiling is
    test_plan_command's): refused, nothing trained, no checkpoint."""
    from types import SimpleNamespace

    from nety_jax.training.loop import train
    stats = SimpleNamespace(argument_size_in_bytes=0, output_size_in_bytes=0, alias_size_in_bytes=0,
                            generated_code_size_in_bytes=0, temp_size_in_bytes=5 * 2 ** 30)
    monkeypatch.setattr(memory, "compiled_stats", lambda runner, state, batch: stats)
    # the trained_gpt fixture's config: its compiled initialisation is in the session's cache
    cfg = load_config(GPT_TINY, ["train.memory_limit_gb=4"])
    with pytest.raises(ConfigError, match=r"^the training step does not fit: .*gradients \+ activations \+ "
                                          r"temporaries 5.00 GB .*train.batch_size \(now 32\)"):
        train(cfg, str(tmp_path / "run"), **QUIET)
    assert not os.path.isdir(tmp_path / "run" / "checkpoints") or not os.listdir(tmp_path / "run" / "checkpoints")


def test_plan_command(capsys):
    from nety_jax.cli import main
    assert main(["plan", "--config", GPT_TINY, "--set", "train.batch_size=8", "--set", "data.seq_len=16"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("memory per device (none on 1 device(s)): parameters 605.50 KB, optimizer state "
                          "1.18 MB, gradients + activations + temporaries ")
    assert "(the compiled step's memory analysis)" in out and "(host memory)" in out
    assert main(["train", "--plan", "--config", GPT_TINY, "--set", "data.seq_len=16",
                 "--set", LIMIT_2_2_MB]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nety-jax: error: the train state does not fit") and "\n" not in err
