"""Fine-tuning from existing weights: ``nety-jax train --init-from RUN_OR_HF_DIR``.

The source gives the architecture (the whole ``model`` section), the tokenizer and the
parameters; the new config gives the data, the optimizer, the schedule and decoding, and
may change only the model's runtime fields (dropout, attention_dropout, dtype). A model
or tokenizer field the new config sets to another value than the source's is an error
naming the field, never silently dropped. The new run starts at step 0 from the source's
parameters, so its first loss is the source model's loss on that data.

Sources: a run directory of ours (any architecture: the newest intact checkpoint's
variables, batch statistics included) or a HuggingFace model directory (config.json;
``models.registry.hf_converter``).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

from nety_jax import config as config_lib
from nety_jax.config import Config
from nety_jax.errors import CheckpointError, ConfigError
from nety_jax.models import get_model
from nety_jax.runs import checkpoints as ckpt
from nety_jax.runs.compat import RUNTIME_MODEL_FIELDS
from nety_jax.runs.files import CONFIG_FILE, checkpoint_dir, load_run_tokenizer, read_run_config
from nety_jax.runs.weights import split_variables
from nety_jax.training.setup import TOKENIZER_FIELDS

RUNTIME_FIELDS = tuple(sorted(RUNTIME_MODEL_FIELDS))  # what a new config may still change


@dataclasses.dataclass
class Source:
    cfg: Config  # the source's config (its model and data sections are what the new run takes)
    tokenizer: object
    variables: dict
    where: str


def _run_variables(path: str, cfg: Config) -> dict:
    """The newest intact checkpoint's model variables (no optimizer state)."""
    abstract = get_model(cfg.model).abstract_variables()
    target = split_variables(abstract)
    manager = ckpt.make_manager(path, cfg, read_only=True)
    try:
        state, _ = ckpt.restore_newest(path, lambda s: ckpt.restore_variables(manager, s, target),
                                       lambda m: print(m))
    finally:
        manager.close()
    if state is None:
        raise CheckpointError(f"--init-from {path}: no checkpoint in {checkpoint_dir(path)}")
    return {"params": state["params"], **state.get("mutables", {})}


def load_source(path: str) -> Source:
    """A run directory of ours (config.yaml) or a HuggingFace model directory (config.json)."""
    if not os.path.isdir(path):
        raise CheckpointError(f"--init-from {path}: no such directory")
    if os.path.isfile(os.path.join(path, CONFIG_FILE)):
        cfg = read_run_config(path)
        if cfg.model.quant != "none":
            raise ConfigError(f"--init-from {path}: model.quant={cfg.model.quant} is an inference copy; "
                              "fine-tune the float32 run it was quantized from")
        return Source(cfg, load_run_tokenizer(path, cfg), _run_variables(path, cfg), path)
    if os.path.isfile(os.path.join(path, "config.json")):
        from nety_jax.models.registry import hf_converter
        cfg, tokenizer, variables = hf_converter().load_hf(path)
        return Source(cfg, tokenizer, variables, path)
    raise CheckpointError(f"--init-from {path}: neither a run directory ({CONFIG_FILE}) nor a "
                          "HuggingFace model directory (config.json)")


def _contradictions(given: dict, source: dict, section: str, allowed: Sequence[str], where: str) -> None:
    for key, value in given.items():
        if key in allowed or key not in source:
            continue
        if value != source[key] and not (isinstance(value, list) and tuple(value) == tuple(source[key] or ())):
            raise ConfigError(f"{section}.{key}={value!r} contradicts --init-from {where}, whose "
                              f"{section}.{key} is {source[key]!r}: the source fixes the "
                              f"{'architecture' if section == 'model' else 'tokenizer'} (remove the field)")


def finetune_config(source: Source, config_path: Optional[str] = None, overrides: Sequence[str] = ()) -> Config:
    """The new run's config: the source's model and tokenizer fields, everything else from the
    YAML file and ``section.key=value`` overrides (which may not contradict the source)."""
    raw = config_lib.apply_overrides(config_lib.read_yaml(config_path) if config_path else {}, list(overrides))
    if not isinstance(raw, dict):
        return config_lib.from_dict(raw, where=config_path or "--set")  # names the problem
    src = source.cfg.to_dict()
    given_model = raw.get("model") or {}
    given_data = raw.get("data") or {}
    if not isinstance(given_model, dict) or not isinstance(given_data, dict):
        return config_lib.from_dict(raw, where=config_path or "--set")
    _contradictions(given_model, src["model"], "model", RUNTIME_FIELDS, source.where)
    _contradictions(given_data, src["data"], "data", [k for k in src["data"] if k not in TOKENIZER_FIELDS],
                    source.where)
    model = {**src["model"], **{k: given_model[k] for k in RUNTIME_FIELDS if k in given_model}}
    data = {**given_data, **{k: src["data"][k] for k in TOKENIZER_FIELDS}}
    return config_lib.from_dict({**raw, "model": model, "data": data}, where=config_path or "--set")
