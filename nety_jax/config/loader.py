"""The whole config: YAML in, typed ``section.key=value`` overrides, validation, YAML out."""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

import yaml

from nety_jax.config import fields as F
from nety_jax.config.sections import DataConfig, DecodeConfig, ModelConfig, TrainConfig
from nety_jax.errors import ConfigError

SECTIONS = ("model", "data", "train", "decode")


def _default_model() -> ModelConfig:
    from nety_jax.models.registry import DEFAULT_ARCH, config_class
    return config_class(DEFAULT_ARCH)()


@dataclasses.dataclass(frozen=True)
class Config:
    model: ModelConfig = dataclasses.field(default_factory=_default_model)
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    decode: DecodeConfig = DecodeConfig()

    def validate(self) -> "Config":
        """Checks every section, then the model's checks across sections; raises ConfigError."""
        for section in SECTIONS:
            getattr(self, section).validate()
        cross = getattr(self.model, "validate_with", None)
        if cross is not None:
            cross(self)
        return self

    def replace(self, **sections) -> "Config":
        """A copy with whole sections replaced (``cfg.replace(decode=...)``), not validated again."""
        return dataclasses.replace(self, **sections)

    def replace_model(self, **changes) -> "Config":
        """A copy with model fields changed (``cfg.replace_model(vocab_size=n)``)."""
        return self.replace(model=dataclasses.replace(self.model, **changes))

    def to_dict(self) -> dict:
        """``{section: {field: value}}`` with tuples as lists: what ``config.yaml`` holds."""
        out = {}
        for section in SECTIONS:
            body = dataclasses.asdict(getattr(self, section))
            out[section] = {k: list(v) if isinstance(v, tuple) else v for k, v in body.items()}
        return out

    def to_yaml(self) -> str:
        """``to_dict()`` as YAML, in the fields' order."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


_CLASSES = {"data": DataConfig, "train": TrainConfig, "decode": DecodeConfig}


def _model_section(body, where: str) -> ModelConfig:
    from nety_jax.models.registry import ARCHITECTURES, DEFAULT_ARCH, config_class
    if not isinstance(body, dict):
        raise ConfigError(f"{where}: section 'model' must be a mapping, got {type(body).__name__}")
    arch = body.get("arch", DEFAULT_ARCH)
    F.choice("model", "arch", arch, tuple(ARCHITECTURES))
    return F.build("model", config_class(arch), body, where)


def from_dict(raw, where: str = "config") -> Config:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of sections "
                          f"({', '.join(SECTIONS)}), got {type(raw).__name__}")
    sections = {}
    for key, body in raw.items():
        if key not in SECTIONS:
            raise ConfigError(f"{where}: unknown section {key!r} (expected {', '.join(SECTIONS)})")
        body = {} if body is None else body
        sections[key] = _model_section(body, where) if key == "model" else \
            F.build(key, _CLASSES[key], body, where)
    return Config(**sections).validate()


def apply_overrides(raw, overrides: list[str]) -> dict:
    """Applies ``section.key=value`` strings (values parsed as YAML) to a raw dict."""
    if raw is not None and not isinstance(raw, dict):
        return raw  # from_dict names the problem
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in (raw or {}).items()}
    named = []
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
        section = raw.setdefault(parts[0], {})
        if section is None:
            section = raw[parts[0]] = {}
        if not isinstance(section, dict):
            raise ConfigError(f"--set {item!r}: section {parts[0]!r} is not a mapping")
        section[parts[1]] = value
        named.append((item, *parts))
    for item, section, name in named:  # after all of them: a later model.arch decides the fields
        _check_name(raw, item, section, name)
    return raw


def _check_name(raw: dict, item: str, section: str, name: str) -> None:
    """An override naming no section or field is blamed on the ``--set`` that named it (from_dict
    would blame the config file it was merged into)."""
    from nety_jax.models.registry import ARCHITECTURES, DEFAULT_ARCH, config_class
    if section not in SECTIONS:
        raise ConfigError(f"--set {item!r}: unknown section {section!r} (expected {', '.join(SECTIONS)})")
    if section == "model":
        arch = raw["model"].get("arch", DEFAULT_ARCH)
        if arch not in ARCHITECTURES:
            return  # from_dict names the arch
        cls = config_class(arch)
    else:
        cls = _CLASSES[section]
    if name not in {f.name for f in dataclasses.fields(cls)}:
        arch_note = f" (arch {arch})" if section == "model" else ""
        raise ConfigError(f"--set {item!r}: unknown field {section}.{name}{arch_note}")


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key, mark):
        super().__init__(f"{key!r} is given twice: the later one would silently replace the earlier")
        self.problem, self.problem_mark = str(self), mark


class _UniqueKeys(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping: PyYAML keeps the last, so
    a second ``train:`` section dropped every field of the first without a word."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` merges, which may override
                    continue
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, (str, int, float, bool)) or key is None:
                    if key in seen:
                        raise _DuplicateKey(key, key_node.start_mark)
                    seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: str):
    if os.path.isdir(path):
        raise ConfigError(f"{path}: is a directory, not a config file")
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: config file not found")
    try:
        with open(path, encoding="utf-8-sig") as f:
            raw = yaml.load(f, Loader=_UniqueKeys)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: invalid YAML ({getattr(e, 'problem', e)})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    if raw is None:  # an empty file (truncated, or saved before it was written) silently gave the defaults
        raise ConfigError(f"{path}: holds no settings (the file is empty or only comments); "
                          "leave --config out for the defaults")
    return raw


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None) -> Config:
    """A validated Config from a YAML file (or the defaults) and ``section.key=value`` overrides."""
    raw = read_yaml(path) if path else {}
    return from_dict(apply_overrides(raw, overrides or []), where=path or "config")


def save_config(cfg: Config, path: str) -> None:
    """Writes atomically: a crash never leaves a half-written config.yaml."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(cfg.to_yaml())
    os.replace(tmp, path)
