"""The one place an architecture plugs in: ``model.arch`` -> its config class, its adapter
and the name of its task (``nety_jax.tasks``).

Entries are import paths, so loading a config (or an exported artifact) imports no Flax code.
"""
from __future__ import annotations

import importlib
from typing import Optional, Sequence

ARCHITECTURES = {
    "hybrid": ("nety_jax.models.hybrid.config:HybridConfig", "nety_jax.models.hybrid.adapter:HybridModel"),
    "gpt": ("nety_jax.models.gpt.config:GPTConfig", "nety_jax.models.gpt.model:GPTModel"),
    "rnn_lm": ("nety_jax.models.rnn_lm.config:RNNLMConfig", "nety_jax.models.rnn_lm.model:RNNLMModel"),
}
TASK_OF = {"hybrid": "seq2seq", "gpt": "lm", "rnn_lm": "lm"}
# the architecture of a config that names no model.arch: NETY's
DEFAULT_ARCH = "hybrid"

# the converter of HuggingFace model directories (config.json + weights + tokenizer): GPT-2
HF_CONVERTER = "nety_jax.models.gpt.hf_io"
# the converter of NETY's PyTorch state dicts (``import_torch``, ``export_torch``): the hybrid
TORCH_CONVERTER = "nety_jax.models.hybrid.torch_io"


def _load(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def config_class(arch: str):
    return _load(ARCHITECTURES[arch][0])


def get_model(model_cfg):
    """The architecture adapter (a frozen, hashable ``Model``) for a model config section."""
    return _load(ARCHITECTURES[model_cfg.arch][1])(model_cfg)


def task_of(arch: str):
    """The task object of an architecture. The task package sits above this one and imports
    nothing of it; it is reached here by name, at call time, as the adapters are."""
    return importlib.import_module("nety_jax.tasks.registry").get_task(TASK_OF[arch])


def architectures_of(task) -> list[str]:
    """The architectures that train for ``task`` (for messages that say which to use)."""
    return [arch for arch, name in TASK_OF.items() if name == task.name]


def hf_converter():
    """The module with ``load_hf(dir)``, ``import_hf(dir, out)`` and ``export_hf(run, out)``."""
    return importlib.import_module(HF_CONVERTER)


def torch_converter():
    """The module with ``import_torch(state_dict, vocab, out, ...)`` and ``export_torch(run, out)``."""
    return importlib.import_module(TORCH_CONVERTER)


def load_hf(model_dir: str):
    """(Config, tokenizer, variables) of a HuggingFace model directory; nothing is written."""
    return hf_converter().load_hf(model_dir)


def import_hf(model_dir: str, out: str, overwrite: bool = False) -> str:
    """A HuggingFace model directory -> a new run directory ``out`` (``nety-jax import-hf``)."""
    return hf_converter().import_hf(model_dir, out, overwrite)


def export_hf(run: str, out: str, overwrite: bool = False) -> str:
    """A run directory -> a new HuggingFace model directory ``out`` (``nety-jax export-hf``)."""
    return hf_converter().export_hf(run, out, overwrite)


def import_torch(state_dict: str, vocab: str, out: str, config: Optional[str] = None,
                 overrides: Sequence[str] = (), overwrite: bool = False) -> str:
    """NETY's PyTorch ``state_dict`` (.pt) and its ``vocab.json`` -> a new run directory ``out``
    (``nety-jax import-torch``); ``config``/``overrides`` set what the state dict does not fix."""
    import sys
    return torch_converter().import_torch(state_dict, vocab, out, config, overrides,
                                          warn=lambda m: print(m, file=sys.stderr), overwrite=overwrite)


def export_torch(run: str, out: str, overwrite: bool = False) -> str:
    """A NETY-parity run directory -> NETY's PyTorch state dict file ``out`` (``nety-jax export-torch``)."""
    return torch_converter().export_torch(run, out, overwrite=overwrite)
