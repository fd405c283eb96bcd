import pytest
import yaml

from nety_jax.config import Config, apply_overrides, from_dict, load_config
from nety_jax.errors import ConfigError
from conftest import PARITY, TINY


def test_parity_config_loads_and_round_trips(tmp_path):
    cfg = load_config(PARITY)
    assert cfg.model.memory == "pooled" and cfg.model.pooling == "last_padded"
    assert not cfg.model.enc_attention_mask and not cfg.model.enc_attention_residual
    path = tmp_path / "resolved.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(str(path)) == cfg


def test_overrides_are_typed():
    cfg = load_config(TINY, ["model.d_model=64", "train.learning_rate=1e-3", "model.bidirectional=false",
                             "model.head_dims=[8, 4]"])
    assert cfg.model.d_model == 64 and cfg.train.learning_rate == 1e-3
    assert cfg.model.bidirectional is False and cfg.model.head_dims == (8, 4)


@pytest.mark.parametrize("override, message", [
    ("model.d_model=500", "model.d_model=500 is not divisible by model.dec_heads=8"),
    ("model.cell=transformer", "model.cell='transformer' must be one of lstm, gru, rnn"),
    ("model.nope=1", "unknown field model.nope"),
    ("train.batch_size=ten", "train.batch_size='ten' must be an integer"),
    ("decode.top_p=0", "decode.top_p=0.0 must be in (0, 1]"),
    ("model.dropout=1.5", "model.dropout=1.5 must be in [0, 1]"),
    ("train.batch_size=10", "train.batch_size=10 is not divisible by train.grad_accum=4"),
    ("nodot=1", "expected section.key=value"),
])
def test_invalid_values_name_the_field(override, message):
    extra = ["train.grad_accum=4"] if "grad_accum" in message else []
    with pytest.raises(ConfigError) as err:
        load_config(None, [override] + extra)
    assert message in str(err.value)


def test_dec_heads_divisibility_message():
    with pytest.raises(ConfigError, match=r"model.d_model=510 is not divisible by model.enc_heads=4"):
        load_config(PARITY, ["model.d_model=510"])
    with pytest.raises(ConfigError, match=r"model.d_model=36 is not divisible by model.dec_heads=8"):
        load_config(PARITY, ["model.d_model=36"])


def test_bad_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  d_model: [1,\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: invalid YAML"):
        load_config(str(path))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "missing.yaml"))


def test_defaults_are_valid_and_frozen():
    cfg = Config().validate()
    with pytest.raises(Exception):
        cfg.model.d_model = 3  # frozen
    assert from_dict(yaml.safe_load(cfg.to_yaml())) == cfg
    assert apply_overrides({}, ["decode.top_k=5"]) == {"decode": {"top_k": 5}}
