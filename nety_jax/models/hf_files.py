"""HuggingFace weight files, read and written without the model classes.

Reads ``model.safetensors``, sharded safetensors (``model.safetensors.index.json``),
``pytorch_model.bin`` and its sharded form (``torch.load(weights_only=True)``: a pickle that
holds anything but tensors is refused, never run). Every floating tensor comes back as a
float32 numpy array (float16 and bfloat16 files included). Each failure is one line naming
the file.
"""
from __future__ import annotations

import json
import os
import re

import numpy as np

from nety_jax.errors import CheckpointError
from nety_jax.runs.quiet import first_line

SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
TORCH_BIN, TORCH_BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFETENSORS, SAFETENSORS_INDEX, TORCH_BIN, TORCH_BIN_INDEX)


def _as_float32(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32) if a.dtype.kind == "f" or a.dtype.name == "bfloat16" else a


def read_safetensors(path: str) -> dict:
    from safetensors import safe_open
    try:
        with safe_open(path, framework="np") as f:
            return {name: _as_float32(f.get_tensor(name)) for name in f.keys()}
    except Exception as e:  # safetensors raises SafetensorError and others for damaged files
        raise CheckpointError(f"{path}: not a complete safetensors file ({first_line(e)})") from None


def read_torch_bin(path: str) -> dict:
    try:
        import torch
    except ImportError:
        raise CheckpointError(f"{path}: reading pytorch_model.bin needs PyTorch (pip install torch); "
                              "or convert the directory to model.safetensors") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for non-checkpoint files
        text = str(e)
        pickled = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        why = (f"a pickle that is not weights only (it holds {pickled[1]}); it is not loaded" if pickled
               else f"not a PyTorch weights file ({first_line(e)})")
        raise CheckpointError(f"{path}: {why}") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        raise CheckpointError(f"{path}: not a state dict (expected a mapping of names to tensors)")
    return {k: v.detach().float().numpy() if v.is_floating_point() else v.detach().numpy()
            for k, v in obj.items()}


def _read_index(model_dir: str, index: str, reader) -> dict:
    path = os.path.join(model_dir, index)
    try:
        with open(path, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        files = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path}: not a shard index (expected a JSON 'weight_map'; {first_line(e)})") \
            from None
    out, found_in = {}, {}
    for name in files:
        shard = os.path.join(model_dir, name)
        if not isinstance(name, str) or os.path.dirname(name) or not os.path.isfile(shard):
            raise CheckpointError(f"{path}: shard {name!r} is missing")
        for tensor, value in reader(shard).items():
            # each tensor is read from the one shard the index names: a tensor in two shards, or in
            # another shard than listed, means the index and its shards disagree (which is right?)
            if tensor in found_in:
                raise CheckpointError(f"{path}: {tensor} is in two shards, {found_in[tensor]} and {name}")
            if weight_map.get(tensor, name) != name:
                raise CheckpointError(f"{path}: lists {tensor} in {weight_map[tensor]}, but it is in {name}")
            out[tensor], found_in[tensor] = value, name
    missing = sorted(set(weight_map) - set(out))
    if missing:
        raise CheckpointError(f"{path}: {missing[0]} is listed in {weight_map[missing[0]]} but is in none of "
                              "its shards")
    return out


def read_weights(model_dir: str) -> dict:
    """The tensors of a HuggingFace model directory (the first of WEIGHT_FILES present)."""
    for name, read in ((SAFETENSORS, read_safetensors), (TORCH_BIN, read_torch_bin)):
        if os.path.isfile(os.path.join(model_dir, name)):
            return read(os.path.join(model_dir, name))
    for index, read in ((SAFETENSORS_INDEX, read_safetensors), (TORCH_BIN_INDEX, read_torch_bin)):
        if os.path.isfile(os.path.join(model_dir, index)):
            return _read_index(model_dir, index, read)
    raise CheckpointError(f"{model_dir}: no weights (expected one of {', '.join(WEIGHT_FILES)})")


def write_safetensors(arrays: dict, path: str) -> None:
    """``save_pretrained``'s format: float32 tensors, metadata format=pt (transformers checks it)."""
    from safetensors.numpy import save_file
    save_file(arrays, path, metadata={"format": "pt"})
