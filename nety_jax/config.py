"""One frozen, validated config for everything: model, data, train, decode.

Loaded from YAML, overridden with ``section.key=value`` strings, validated with a
message that names the field, and written back beside every checkpoint.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from typing import Any, Optional

import yaml

from nety_jax.errors import ConfigError

PAD_ID, SOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3


def _choice(section: str, name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{section}.{name}={value!r} must be one of {', '.join(map(str, choices))}")


def _positive(section: str, obj, *names: str, allow_zero: bool = False) -> None:
    for name in names:
        value = getattr(obj, name)
        if value < 0 or (value == 0 and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            raise ConfigError(f"{section}.{name}={value} must be {bound}")


def _probability(section: str, obj, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{section}.{name}={value} must be in [0, 1]")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 8000  # replaced by the trained tokenizer's size
    d_model: int = 512
    # encoder
    enc_heads: int = 4
    enc_hidden: int = 256  # per direction
    enc_layers: int = 3
    cell: str = "lstm"  # lstm | gru | rnn
    bidirectional: bool = True
    enc_attention_mask: bool = True  # NETY: False (pads are attended to)
    enc_attention_residual: bool = True  # NETY: False (attention replaces the embeddings)
    pooling: str = "last_real"  # last_real | last_padded (NETY)
    head_dims: tuple = (256, 128)
    head_norm: str = "batch"  # batch (NETY) | layer
    memory: str = "sequence"  # pooled (NETY: one vector) | sequence
    memory_prepend_pooled: bool = True  # sequence mode: put the pooled vector first
    # decoder
    dec_layers: int = 6
    dec_heads: int = 8
    d_ff: int = 2048
    norm: str = "post"  # post (NETY) | pre
    output_bias: bool = True
    tie_output: bool = False
    max_len: int = 512  # rows of the sinusoidal table
    dropout: float = 0.1
    attention_dropout: float = 0.1
    # numerics and devices
    dtype: str = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)
    bn_axis_name: Optional[str] = None  # set to 'batch' by the pmap / shard_map backends

    def validate(self) -> None:
        s = "model"
        _positive(s, self, "vocab_size", "d_model", "enc_heads", "enc_hidden", "enc_layers",
                  "dec_layers", "dec_heads", "d_ff", "max_len")
        if self.vocab_size <= UNK_ID:
            raise ConfigError(f"model.vocab_size={self.vocab_size} must be > {UNK_ID} (4 special ids)")
        for heads in ("enc_heads", "dec_heads"):
            if self.d_model % getattr(self, heads):
                raise ConfigError(f"model.d_model={self.d_model} is not divisible by "
                                  f"model.{heads}={getattr(self, heads)}")
        _choice(s, "cell", self.cell, ("lstm", "gru", "rnn"))
        _choice(s, "pooling", self.pooling, ("last_real", "last_padded"))
        _choice(s, "head_norm", self.head_norm, ("batch", "layer"))
        _choice(s, "memory", self.memory, ("pooled", "sequence"))
        _choice(s, "norm", self.norm, ("post", "pre"))
        _choice(s, "dtype", self.dtype, ("float32", "bfloat16"))
        _probability(s, self, "dropout", "attention_dropout")
        if any((not isinstance(d, int)) or d <= 0 for d in self.head_dims):
            raise ConfigError(f"model.head_dims={list(self.head_dims)} must be positive integers")

    @property
    def enc_out_dim(self) -> int:
        return self.enc_hidden * (2 if self.bidirectional else 1)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    format: str = "auto"  # auto (from the extension) | jsonl | tsv
    input_key: str = "input"
    target_key: str = "target"
    max_src_len: int = 50
    max_tgt_len: int = 50  # tokens after <sos>, <eos> included
    src_eos: bool = True  # end sources with <eos>
    val_fraction: float = 0.05
    bucket_multiple: int = 8  # pad batch lengths up to a multiple of this (few shapes, few compiles)
    tokenizer: str = "sentencepiece"  # sentencepiece | word (NETY's vocabulary)
    spm_model_type: str = "unigram"  # unigram | bpe
    vocab_size: int = 8000
    lowercase: bool = False

    def validate(self) -> None:
        s = "data"
        _choice(s, "format", self.format, ("auto", "jsonl", "tsv"))
        _choice(s, "tokenizer", self.tokenizer, ("sentencepiece", "word"))
        _choice(s, "spm_model_type", self.spm_model_type, ("unigram", "bpe"))
        _positive(s, self, "max_src_len", "max_tgt_len", "bucket_multiple")
        if self.vocab_size <= 8:
            raise ConfigError(f"data.vocab_size={self.vocab_size} must be > 8")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction={self.val_fraction} must be in [0, 1)")
        if not self.input_key or not self.target_key:
            raise ConfigError("data.input_key and data.target_key must be non-empty")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    steps: int = 2000
    batch_size: int = 32  # global batch, split over devices and micro-batches
    grad_accum: int = 1  # micro-batches per step (gradients weighted by tokens)
    optimizer: str = "adamw"  # adamw | adam
    learning_rate: float = 5e-4
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-9
    clip_norm: float = 1.0  # 0 disables clipping
    schedule: str = "warmup_cosine"  # constant | linear | warmup_cosine | warmup_rsqrt
    warmup_steps: int = 200
    end_lr_fraction: float = 0.1  # cosine / linear end value as a fraction of the peak
    label_smoothing: float = 0.1
    parallel: str = "none"  # none | pmap | shard_map
    log_every: int = 20
    eval_every: int = 200
    eval_batches: int = 8  # validation batches per evaluation (0: all)
    bleu_samples: int = 32  # validation pairs answered greedily for BLEU / chrF
    checkpoint_every: int = 200
    keep_latest: int = 2
    keep_best: int = 1

    def validate(self) -> None:
        s = "train"
        _positive(s, self, "steps", "batch_size", "grad_accum", "learning_rate", "log_every",
                  "eval_every", "checkpoint_every", "keep_latest")
        _positive(s, self, "warmup_steps", "clip_norm", "weight_decay", "eval_batches",
                  "bleu_samples", "keep_best", allow_zero=True)
        _choice(s, "optimizer", self.optimizer, ("adamw", "adam"))
        _choice(s, "schedule", self.schedule, ("constant", "linear", "warmup_cosine", "warmup_rsqrt"))
        _choice(s, "parallel", self.parallel, ("none", "pmap", "shard_map"))
        _probability(s, self, "label_smoothing", "end_lr_fraction", "b1", "b2")
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"train.batch_size={self.batch_size} is not divisible by "
                              f"train.grad_accum={self.grad_accum}")
        if self.schedule == "warmup_cosine" and self.warmup_steps >= self.steps:
            raise ConfigError(f"train.warmup_steps={self.warmup_steps} must be < train.steps={self.steps}")


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    max_new_tokens: int = 50
    temperature: float = 0.8  # 0: greedy
    top_k: int = 50  # 0: no top-k cut (full sort, slow path)
    top_p: float = 0.9  # 1: no nucleus cut
    beam_size: int = 1  # > 1: beam search (deterministic)
    length_penalty: float = 0.6  # beam search: score / ((5 + len) / 6) ** alpha
    min_new_tokens: int = 0  # <eos> is forbidden before this many tokens
    no_repeat_ngram: int = 0  # 0 disables; n > 0 bans repeating any n-gram
    ignore_eos: bool = False  # benchmarks: always produce max_new_tokens

    def validate(self) -> None:
        s = "decode"
        _positive(s, self, "max_new_tokens", "beam_size")
        _positive(s, self, "temperature", "top_k", "length_penalty", "min_new_tokens",
                  "no_repeat_ngram", allow_zero=True)
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"decode.top_p={self.top_p} must be in (0, 1]")
        if self.min_new_tokens > self.max_new_tokens:
            raise ConfigError(f"decode.min_new_tokens={self.min_new_tokens} must be <= "
                              f"decode.max_new_tokens={self.max_new_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


@dataclasses.dataclass(frozen=True)
class Config:
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    decode: DecodeConfig = DecodeConfig()

    def validate(self) -> "Config":
        for section in dataclasses.fields(self):
            getattr(self, section.name).validate()
        if self.data.max_tgt_len + 1 > self.model.max_len:
            raise ConfigError(f"data.max_tgt_len={self.data.max_tgt_len} must be < "
                              f"model.max_len={self.model.max_len}")
        if self.decode.max_new_tokens + 1 > self.model.max_len:
            raise ConfigError(f"decode.max_new_tokens={self.decode.max_new_tokens} must be < "
                              f"model.max_len={self.model.max_len}")
        return self

    def replace(self, **sections) -> "Config":
        return dataclasses.replace(self, **sections)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["model"]["head_dims"] = list(self.model.head_dims)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


_SECTION_CLASSES = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig,
                    "decode": DecodeConfig}


def _coerce(section: str, field: dataclasses.Field, value: Any, hints: dict) -> Any:
    """Checks a raw YAML value against the field's annotated type."""
    name = f"{section}.{field.name}"
    hint = hints[field.name]
    origin = typing.get_origin(hint)
    if origin is typing.Union:  # Optional[str]
        if value is None:
            return None
        hint = [a for a in typing.get_args(hint) if a is not type(None)][0]
    if hint is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}={value!r} must be a list")
        return tuple(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}={value!r} must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}={value!r} must be an integer")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}={value!r} must be a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}={value!r} must be a string")
        return value
    return value


def from_dict(raw: dict, where: str = "config") -> Config:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of sections")
    sections = {}
    for key, body in raw.items():
        if key not in _SECTION_CLASSES:
            raise ConfigError(f"{where}: unknown section {key!r} (expected "
                              f"{', '.join(_SECTION_CLASSES)})")
        cls = _SECTION_CLASSES[key]
        body = body or {}
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: section {key!r} must be a mapping")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        values = {}
        for name, value in body.items():
            if name not in fields:
                raise ConfigError(f"{where}: unknown field {key}.{name}")
            values[name] = _coerce(key, fields[name], value, hints)
        sections[key] = cls(**values)
    return Config(**sections).validate()


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Applies ``section.key=value`` strings (values parsed as YAML) to a raw dict."""
    raw = {k: dict(v or {}) for k, v in (raw or {}).items()}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        path, text = item.split("=", 1)
        parts = path.strip().split(".")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        raw.setdefault(parts[0], {})
        if not isinstance(raw[parts[0]], dict):
            raise ConfigError(f"--set {item!r}: section {parts[0]!r} is not a mapping")
        raw[parts[0]][parts[1]] = value
    return raw


def read_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: config file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: invalid YAML ({getattr(e, 'problem', e)})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None) -> Config:
    raw = read_yaml(path) if path else {}
    return from_dict(apply_overrides(raw, overrides or []), where=path or "config")


def save_config(cfg: Config, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(cfg.to_yaml())


def replace_model(cfg: Config, **changes) -> Config:
    return cfg.replace(model=dataclasses.replace(cfg.model, **changes))
