"""``nety-jax quantize``: a trained run -> an int8 weight-only run directory for inference.

Every ``Linear`` kernel (attention, feed-forward, output head, the encoder's
projections) becomes int8 with one float32 scale per output channel; embeddings,
norms, biases, recurrent kernels and BatchNorm statistics stay float32. The
result is a normal run directory (``model.quant: int8``, ``model.dtype`` the
activations' dtype) that generate, chat, serve, export and load_pretrained use
as they use any run.
"""
from __future__ import annotations

import os
from typing import Callable

import jax
import numpy as np

from nety_jax.errors import ConfigError, NetyError
from nety_jax.layers.linear import quantize_kernel
from nety_jax.models import get_model
from nety_jax.runs import guard
from nety_jax.runs.files import write_run_config
from nety_jax.runs.weights import write_weights


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree, path, value):
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def quantize_variables(variables: dict, model_cfg) -> dict:
    """Float variables -> the variables of the same model with ``quant=int8``."""
    target = get_model(model_cfg.replace(quant="int8")).abstract_variables()
    out: dict = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(target):
        keys = tuple(k.key for k in path)
        if keys[-1] == "scale" and "kernel" in _get(target, keys[:-1]):
            continue  # written with its kernel
        source = np.asarray(_get(variables, keys))
        if keys[-1] == "kernel" and leaf.dtype == np.int8:
            q, scale = quantize_kernel(source)
            _set(out, keys, q)
            _set(out, keys[:-1] + ("scale",), scale)
        else:
            _set(out, keys, source.astype(leaf.dtype))
    return out


def param_bytes(variables: dict) -> int:
    return int(sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(variables)))


def quantize_run(checkpoint: str, out: str, activations: str = "float32",
                 log: Callable[[str], None] = print, overwrite: bool = False) -> str:
    """Writes an int8 copy of a run into ``out`` (through the writers' guard: a new or empty
    directory, or an earlier quantize output with ``overwrite``)."""
    if activations not in ("float32", "bfloat16"):
        raise ConfigError(f"--activations={activations!r} must be float32 or bfloat16")
    with guard.output(out, "quantize", overwrite) as tmp:  # checked before any work
        source, before, after = _quantize_into(checkpoint, tmp, activations)
    log(f"quantized {checkpoint} (step {source.step}) into {out}: parameters {before / 2**20:.1f} MB -> "
        f"{after / 2**20:.1f} MB (int8 weights, {activations} activations)")
    return out


def _quantize_into(checkpoint: str, tmp: str, activations: str):
    from nety_jax.serving.pretrained import load_pretrained
    source = load_pretrained(checkpoint)
    if source.config.model.quant != "none":
        raise NetyError(f"{checkpoint}: is already quantized (model.quant={source.config.model.quant})")
    cfg = source.config.replace_model(quant="int8", dtype=activations)
    variables = quantize_variables(jax.device_get(source.variables), source.config.model)
    write_run_config(tmp, cfg)
    source.tokenizer.save(tmp)
    write_weights(tmp, cfg, variables, source.step, {"quantized_from": os.path.abspath(checkpoint)})
    return source, param_bytes(source.variables), param_bytes(variables)
