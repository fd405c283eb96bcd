"""Serving artifacts: the whole jitted generate function through ``jax.export``.

An export directory holds::

    generate.bin     serialized jax.export.Exported (platforms cpu and cuda,
                     symbolic batch and source length unless --batch-size is given)
    variables.npz    the model variables, flattened with '/'-joined paths
    config.yaml, tokenizer.json (+ model file)
    export.json      jax version, platforms, decode settings baked in

Loading it (``load_exported``) needs jax, numpy and the tokenizer, not the Flax
model code. Serialized artifacts are readable within JAX's compatibility window
(about 6 months backward); export.json records the jax version that wrote it.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nety_jax import config as config_lib
from nety_jax.errors import CheckpointError, NetyError
from nety_jax.prompts import decode_replies, encode_sources
from nety_jax.tokenizer import load_tokenizer

ARTIFACT = "generate.bin"
VARIABLES = "variables.npz"
INFO = "export.json"
CONFIG = "config.yaml"
PLATFORMS = ("cpu", "cuda")


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            if not value:
                out[path + "/"] = np.zeros((0,), np.float32)  # keeps empty collections
            out.update(_flatten(value, path))
        else:
            out[path] = np.asarray(value)
    return out


def _unflatten(flat: dict) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        parts = path.split("/")
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if parts[-1]:
            node[parts[-1]] = value
    return tree


def export_run(checkpoint: str, out: str, batch_size: int = 0, overrides: Sequence[str] = ()) -> str:
    """Exports the latest checkpoint of a run directory's generate function to ``out``."""
    import dataclasses
    from nety_jax.generate import generate
    from nety_jax.pretrained import load_pretrained

    model = load_pretrained(checkpoint)
    cfg = model.config
    for item in overrides:
        if not item.startswith("decode."):
            raise NetyError(f"--set {item!r}: only decode.* settings can be baked into an export")
    if overrides:
        raw = config_lib.apply_overrides(cfg.to_dict(), list(overrides))
        cfg = config_lib.from_dict(raw, where="--set")
    dcfg = cfg.decode

    def serve(variables, src, src_lengths, rng):
        out = generate(variables, src, src_lengths, rng, cfg=cfg.model, dcfg=dcfg)
        return out["tokens"], out["lengths"], out["scores"]

    if batch_size > 0:
        b, s = batch_size, jax.export.symbolic_shape("s")[0]
    else:
        b, s = jax.export.symbolic_shape("b, s")
    args = (jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), model.variables),
            jax.ShapeDtypeStruct((b, s), jnp.int32), jax.ShapeDtypeStruct((b,), jnp.int32),
            jax.ShapeDtypeStruct((2,), jnp.uint32))
    exported = jax.export.export(jax.jit(serve), platforms=PLATFORMS)(*args)

    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, ARTIFACT), "wb") as f:
        f.write(exported.serialize())
    np.savez(os.path.join(out, VARIABLES), **_flatten(jax.device_get(model.variables)))
    config_lib.save_config(cfg, os.path.join(out, CONFIG))
    model.tokenizer.save(out)
    with open(os.path.join(out, INFO), "w", encoding="utf-8") as f:
        json.dump({"jax_version": jax.__version__, "platforms": list(PLATFORMS),
                   "batch": batch_size or "symbolic", "source_length": "symbolic",
                   "checkpoint": os.path.abspath(checkpoint), "step": model.step,
                   "decode": dataclasses.asdict(dcfg)}, f, indent=2)
    return out


class ExportedModel:
    """Generation from an export directory: tokenizer + deserialized function + weights."""

    def __init__(self, directory: str):
        paths = [os.path.join(directory, n) for n in (ARTIFACT, VARIABLES, INFO)]
        for path in paths:
            if not os.path.isfile(path):
                raise CheckpointError(f"{path}: missing; is {directory} a `nety-jax export` output?")
        with open(paths[2], encoding="utf-8") as f:
            self.info = json.load(f)
        try:
            with open(paths[0], "rb") as f:
                self.exported = jax.export.deserialize(bytearray(f.read()))
        except Exception as e:  # the deserializer raises several types for foreign files
            raise CheckpointError(f"{paths[0]}: cannot deserialize (written by jax "
                                  f"{self.info.get('jax_version')}, this is jax {jax.__version__}): "
                                  f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        with np.load(paths[1]) as data:
            self.variables = _unflatten({k: jnp.asarray(data[k]) for k in data.files})
        self.config = config_lib.load_config(os.path.join(directory, CONFIG))
        self.tokenizer = load_tokenizer(directory)

    def generate_ids(self, src: np.ndarray, lengths: np.ndarray, seed: int = 0):
        tokens, lens, scores = self.exported.call(self.variables, jnp.asarray(src, jnp.int32),
                                                  jnp.asarray(lengths, jnp.int32),
                                                  jax.random.key_data(jax.random.PRNGKey(seed)))
        return np.asarray(tokens), np.asarray(lens), np.asarray(scores)

    def generate(self, texts: Sequence[str], seed: int = 0, num_samples: int = 1) -> list[list[str]]:
        repeated = [t for t in texts for _ in range(num_samples)]
        fixed = self.info.get("batch")
        src, lengths = encode_sources(self.tokenizer, repeated, self.config.data,
                                      pad_batch=not isinstance(fixed, int))
        if isinstance(fixed, int):
            if len(repeated) > fixed:
                raise NetyError(f"this export takes batches of {fixed}; got {len(repeated)} prompts")
            pad = fixed - src.shape[0]
            src = np.pad(src, ((0, pad), (0, 0)))
            lengths = np.pad(lengths, (0, pad), constant_values=1)
        tokens, _, _ = self.generate_ids(src, lengths, seed)
        replies = decode_replies(self.tokenizer, tokens, len(repeated))
        return [replies[i * num_samples: (i + 1) * num_samples] for i in range(len(texts))]


def load_exported(directory: str) -> ExportedModel:
    if not os.path.isdir(directory):
        raise CheckpointError(f"{directory}: no such export directory")
    return ExportedModel(directory)
