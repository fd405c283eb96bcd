"""What training.setup.prepare finds in a run directory before anything is built."""
import pytest

from conftest import TINY
from nety_jax.config import load_config
from nety_jax.errors import CheckpointError
from nety_jax.runs import guard
from nety_jax.training.loop import train


def test_checkpoints_without_their_config_are_refused_before_any_work(tmp_path):
    guard.mark(str(tmp_path), "train")  # a run of ours whose config.yaml was lost
    (tmp_path / "checkpoints" / "40").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="holds checkpoints but no config.yaml"):
        train(load_config(TINY), str(tmp_path), progress=False)
    assert not (tmp_path / "config.yaml").exists() and not (tmp_path / "tokenizer.json").exists()
