import pytest
import yaml

from nety_jax.config import Config, apply_overrides, from_dict, load_config
from nety_jax.errors import ConfigError
from conftest import GPT_TINY, PARITY, TINY


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


@pytest.mark.parametrize("override, message", [
    ("model.nope=1", "--set 'model.nope=1': unknown field model.nope (arch hybrid)"),
    ("model.enc_heads=2", "--set 'model.enc_heads=2': unknown field model.enc_heads (arch gpt)"),
    ("nosection.x=1", "--set 'nosection.x=1': unknown section 'nosection' (expected model, data, train, decode)"),
])
def test_an_unknown_override_is_blamed_on_the_set_not_the_file(override, message):
    """QA r7: ``--set model.nope=1`` over a config file said the FILE had an unknown field."""
    path = GPT_TINY if "enc_heads" in override else TINY
    with pytest.raises(ConfigError) as err:
        load_config(path, [override])
    assert str(err.value) == message


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


@pytest.mark.parametrize("override, message", [
    ("model.max_len=100000000", "model.max_len=100000000 is too large"),
    ("model.vocab_size=99999999999", "model.vocab_size=99999999999 is too large"),
    ("model.d_model=1000000", "model.d_model=1000000 is too large"),
    ("data.vocab_size=5", "data.vocab_size=5 must be > 8"),
    ("train.learning_rate=.nan", "train.learning_rate=nan must be a finite number"),
    ("train.learning_rate=.inf", "train.learning_rate=inf must be a finite number"),
    ("decode.temperature=.nan", "decode.temperature=nan must be a finite number"),
    ("decode.length_penalty=-1", "decode.length_penalty=-1.0 must be >= 0"),
    ("decode.max_new_tokens=100000", "decode.max_new_tokens=100000 is too large"),
    ("decode.top_k=-1", "decode.top_k=-1 must be >= 0"),
    ("model.arch=transformer", "model.arch='transformer' must be one of hybrid, gpt, rnn_lm"),
    ("model.quant=int4", "model.quant='int4' must be one of none, int8"),
    ("data.word_split=chars", "data.word_split='chars' must be one of whitespace, punctuation"),
    ("train.batch_size=true", "train.batch_size=True must be an integer"),
    ("model.head_dims=[0, 8]", "model.head_dims=[0, 8] must be positive integers"),
    ("data.subword_alpha=1.5", "data.subword_alpha=1.5 must be in [0, 1]"),
])
def test_every_field_is_checked_by_name(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)


def test_subword_sampling_needs_sentencepiece():
    with pytest.raises(ConfigError, match="data.subword_alpha=0.3 samples SentencePiece segmentations"):
        load_config(None, ["data.subword_alpha=0.3", "data.tokenizer=word"])


@pytest.mark.parametrize("text, message", [
    ("- a\n- b\n", "the top level must be a mapping of sections"),
    ("42\n", "the top level must be a mapping of sections"),
    ("model: [1, 2]\n", "section 'model' must be a mapping"),
    ("train: 3\n", "section 'train' must be a mapping"),
    ("model:\n  arch: gpt\n  enc_heads: 4\n", "unknown field model.enc_heads"),
])
def test_malformed_config_files_are_named(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert str(path) in str(err.value) and message in str(err.value)
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(str(tmp_path))


def test_the_gpt_and_rnn_configs_load_and_check_their_windows():
    from conftest import CONFIGS
    for name in ("gpt2_124m.yaml", "gpt_tiny.yaml", "rnn_lm.yaml"):
        load_config(str(CONFIGS / name))
    with pytest.raises(ConfigError, match="data.seq_len=2048 must be <= model.max_len=1024"):
        load_config(str(CONFIGS / "gpt2_124m.yaml"), ["data.seq_len=2048"])
