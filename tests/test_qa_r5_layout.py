"""QA round 5: a bad device layout (`--parallel`, `train.mesh_*`, a batch that does not split over
the devices) is refused before the data is read and a tokenizer trained, not after."""
import pytest

from conftest import TINY
from nety_jax import load_config, train
from nety_jax.errors import ConfigError
from nety_jax.training import setup


class DataWasRead(Exception):
    pass


@pytest.mark.parametrize("overrides, message", [
    (["train.parallel=mesh", "train.mesh_fsdp=3"], "train.mesh_fsdp=3 x train.mesh_tensor=1 does not divide"),
    (["train.parallel=mesh", "train.mesh_rules=[batch=data, nonsense=tensor]"], "unknown logical axis 'nonsense'"),
    (["train.parallel=mesh", "train.mesh_tensor=4", "train.batch_size=6", "train.mesh_rules=[batch=tensor]"],
     "train.batch_size=6 must be divisible by the batch's mesh axes"),
    (["train.parallel=pmap", "train.batch_size=6"], "train.batch_size=6 must be divisible by processes x devices"),
])
def test_a_bad_layout_is_refused_before_the_data_is_read(tmp_path, monkeypatch, overrides, message):
    """`train --parallel mesh --set train.mesh_fsdp=3` on 4 devices read the corpus and trained a
    SentencePiece tokenizer (minutes on a large corpus) before the Runner found the mesh impossible."""
    def read(*args, **kwargs):
        raise DataWasRead("the data was read before the layout was checked")
    monkeypatch.setattr(setup, "_read_raw", read)
    cfg = load_config(TINY, overrides)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        train(cfg, str(tmp_path / "run"), progress=False, log=lambda *_: None)
    assert not (tmp_path / "run" / "tokenizer.model").exists()
