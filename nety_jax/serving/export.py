"""Serving artifacts: the whole jitted generate function through ``jax.export``.

An export directory holds::

    generate.bin     serialized jax.export.Exported (platforms cpu and cuda,
                     symbolic batch and prompt length unless --batch-size is given)
    variables.npz    the model variables, flattened with '/'-joined paths
    config.yaml, tokenizer.json (+ model file)
    export.json      jax version, the signature, the runtime options it accepts, the
                     static decode settings baked in, sha256 of the two binaries
    nety-jax.json    the writers' marker (runs/guard.py) with the sha256 of every file
                     above: a file changed or added later is named and refused at load

Temperature, top-k, top-p, max_new_tokens (up to the compiled maximum) and the seed
are runtime inputs (per-row arrays); beam settings are baked in. Loading it
(``load_exported``) needs jax, numpy and the tokenizer, not the Flax model code.
Serialized artifacts are readable within JAX's compatibility window (about 6
months backward); export.json records the jax version that wrote it.
"""
from __future__ import annotations

import json
import os
import zipfile
import sys
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nety_jax import config as config_lib
from nety_jax import kernels
from nety_jax.data.prompts import decode_replies, encode_prompts
from nety_jax.data.tokenizer import load_tokenizer
from nety_jax.decoding.keys import row_keys
from nety_jax.errors import CheckpointError, NetyError
from nety_jax.runs import guard
from nety_jax.runs.manifest import sha256, verify
from nety_jax.tasks import task_of_signature
from nety_jax.serving.settings import (RUNTIME, check_bool, check_int, check_num_samples, check_texts,
                                       in_parts, per_sample, resolve, seeds_per_row)

ARTIFACT = "generate.bin"
VARIABLES = "variables.npz"
INFO = "export.json"
CONFIG = "config.yaml"
PLATFORMS = ("cpu", "cuda")
FORMAT = 2


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


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


def _serve_fn(model, spec):
    from nety_jax.decoding.generation import generate
    from nety_jax.decoding.sampling import SamplingParams

    def serve(variables, tokens, lengths, temperature, top_k, top_p, max_new_tokens, key):
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p,
                                max_new_tokens=max_new_tokens, key=key)
        out = generate(variables, tokens, lengths, params, model=model, spec=spec)
        return out["tokens"], out["lengths"], out["scores"]
    return serve


def export_run(checkpoint: str, out: str, batch_size: int = 0, overrides: Sequence[str] = (),
               overwrite: bool = False) -> str:
    """Exports the newest checkpoint of a run directory's generate function to ``out`` (written
    through the writers' guard: a new or empty directory, or an earlier export with ``overwrite``)."""
    with guard.output(out, "export", overwrite) as tmp:  # checked before any work
        _export(checkpoint, tmp, batch_size, overrides)
    return out


def _export(checkpoint: str, tmp: str, batch_size: int, overrides: Sequence[str]) -> None:
    from nety_jax.serving.pretrained import load_pretrained
    from nety_jax.serving.settings import STATIC

    if batch_size < 0:
        raise NetyError(f"--batch-size={batch_size} must be >= 0 (0: any batch size)")
    model = load_pretrained(checkpoint)
    cfg = model.config
    for item in overrides:
        if not item.startswith("decode."):
            raise NetyError(f"--set {item!r}: only decode.* settings can be baked into an export")
    if overrides:
        cfg = config_lib.from_dict(config_lib.apply_overrides(cfg.to_dict(), list(overrides)), where="--set")
    req = resolve(cfg.decode, model.model.prompts, 1, {}, compiled_max=cfg.decode.max_new_tokens)
    spec = req.spec
    limit = model.model.prompts.limit(cfg.data, spec.max_new_tokens)  # the longest prompt
    b, s = jax.export.symbolic_shape("b, s", constraints=[f"s <= {limit}"])
    if batch_size > 0:
        b = batch_size
    row = lambda dtype: jax.ShapeDtypeStruct((b,), dtype)
    args = (jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), model.variables),
            jax.ShapeDtypeStruct((b, s), jnp.int32), row(jnp.int32), row(jnp.float32), row(jnp.int32),
            row(jnp.float32), row(jnp.int32), jax.ShapeDtypeStruct((b, 2), jnp.uint32))
    with kernels.portable():  # an artifact must not need our CPU kernel to load
        exported = jax.export.export(jax.jit(_serve_fn(model.model, spec)), platforms=PLATFORMS)(*args)

    with open(os.path.join(tmp, ARTIFACT), "wb") as f:
        f.write(exported.serialize())
    np.savez(os.path.join(tmp, VARIABLES), **_flatten(jax.device_get(model.variables)))
    config_lib.save_config(cfg, os.path.join(tmp, CONFIG))
    model.tokenizer.save(tmp)
    info = {"format": FORMAT, "jax_version": jax.__version__, "platforms": list(PLATFORMS),
            "batch": batch_size or "symbolic", "prompt_length": "symbolic",
            "signature": model.model.serving_signature(),
            "options": [] if spec.beam_size > 1 else list(RUNTIME) + ["seed"],
            "max_new_tokens": spec.max_new_tokens,
            "static": {k: getattr(spec, k) for k in STATIC},
            "defaults": {k: getattr(cfg.decode, k) for k in RUNTIME},
            "checkpoint": os.path.abspath(checkpoint), "step": model.step,
            "sha256": {name: sha256(os.path.join(tmp, name)) for name in (ARTIFACT, VARIABLES)}}
    with open(os.path.join(tmp, INFO), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)


def _read_info(directory: str) -> dict:
    path = os.path.join(directory, INFO)
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: malformed ({e})") from None
    need = {"jax_version": str, "signature": dict, "options": list, "max_new_tokens": int,
            "static": dict, "sha256": dict}
    if not isinstance(info, dict) or any(not isinstance(info.get(k), t) for k, t in need.items()):
        raise CheckpointError(f"{path}: not a nety-jax export description (written by an older "
                              "version? re-export)")
    return info


class ExportedModel:
    """Generation from an export directory: tokenizer + deserialized function + weights. Its
    ``generate`` and ``generate_ids`` are ``Pretrained``'s (``serving.protocol.InferenceModel``)."""

    def __init__(self, directory: str, warn: Callable[[str], None] = _stderr):
        self.warn = warn
        for name in (ARTIFACT, VARIABLES, INFO):
            if not os.path.isfile(os.path.join(directory, name)):
                raise CheckpointError(f"{os.path.join(directory, name)}: missing; is {directory} a "
                                      "`nety-jax export` output?")
        # every file of the export against the marker's checksums; an export older than the
        # marker has checksums of its two binaries only
        sealed = verify(directory, "export", "re-export")
        self.info = info = _read_info(directory)
        for name, digest in ({} if sealed else info["sha256"]).items():
            if sha256(os.path.join(directory, name)) != digest:
                raise CheckpointError(f"{os.path.join(directory, name)}: damaged (its checksum does "
                                      "not match export.json); re-export")
        self.exported = self._deserialize(os.path.join(directory, ARTIFACT))
        self.variables = self._load_variables(os.path.join(directory, VARIABLES))
        self.config = config_lib.load_config(os.path.join(directory, CONFIG))
        self.tokenizer = load_tokenizer(directory)
        self.task = task_of_signature(info["signature"], os.path.join(directory, INFO))
        self.prompts = self.task.prompts(self.config.model)
        self.step = info.get("step", 0)

    def _deserialize(self, path: str):
        try:
            with open(path, "rb") as f:
                return jax.export.deserialize(bytearray(f.read()))
        except Exception as e:  # the deserializer raises several types for foreign files
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CheckpointError(f"{path}: cannot deserialize (written by jax "
                                  f"{self.info.get('jax_version')}, this is jax {jax.__version__}): "
                                  f"{first[:200]}") from None

    def _load_variables(self, path: str) -> dict:
        try:
            with np.load(path) as data:
                flat = {k: data[k] for k in data.files}
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
            raise CheckpointError(f"{path}: unreadable ({type(e).__name__}: "
                                  f"{str(e)[:160]}); re-export") from None
        variables = _unflatten(flat)
        args = jax.tree_util.tree_unflatten(self.exported.in_tree, self.exported.in_avals)[0]
        expected = {jax.tree_util.keystr(p): a for p, a in jax.tree_util.tree_leaves_with_path(args[0])}
        got = {jax.tree_util.keystr(p): a for p, a in jax.tree_util.tree_leaves_with_path(variables)}
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        if missing or extra:
            raise CheckpointError(f"{path}: does not fit {ARTIFACT} (missing {missing[:3]}, "
                                  f"unexpected {extra[:3]})")
        for key, aval in expected.items():
            if tuple(got[key].shape) != tuple(aval.shape) or got[key].dtype != aval.dtype:
                raise CheckpointError(f"{path}: {key} is {got[key].dtype}{list(got[key].shape)}, "
                                      f"{ARTIFACT} expects {aval.dtype}{list(aval.shape)}")
        return jax.tree_util.tree_map(jnp.asarray, variables)

    def call_ids(self, tokens: np.ndarray, lengths: np.ndarray, seed=0, first_row: int = 0, **settings):
        """Runs the artifact on an id batch: (B, T) right-padded prompt ids and their (B,) lengths ->
        (tokens (B, N), lengths (B,), scores (B,)) numpy. Settings are per-row values or scalars;
        with one seed, row i draws from fold_in(PRNGKey(seed), first_row + i)."""
        first_row = check_int("first_row", first_row, 0)
        tokens, lengths = self._check_ids(tokens, lengths)
        unknown = sorted(set(settings) - set(RUNTIME))
        if unknown:
            raise NetyError(f"{unknown[0]}: not a setting this export takes at run time (it takes "
                            f"{', '.join(self.info['options']) or 'nothing'})")
        b = tokens.shape[0]
        defaults = self.info.get("defaults", {})
        value = lambda k, dtype: np.broadcast_to(np.asarray(settings.get(k, defaults.get(k, 0)), dtype), (b,))
        keys = row_keys(seed, b, first_row)
        out = self.exported.call(self.variables, jnp.asarray(tokens, jnp.int32), jnp.asarray(lengths, jnp.int32),
                                 value("temperature", np.float32), value("top_k", np.int32),
                                 value("top_p", np.float32), value("max_new_tokens", np.int32),
                                 jnp.asarray(keys, jnp.uint32))
        return tuple(np.asarray(x) for x in out)

    def _check_ids(self, tokens, lengths) -> tuple[np.ndarray, np.ndarray]:
        """``call_ids``' id batch as int32 arrays, or a NetyError naming the argument (JAX's shape
        errors, or ids past the vocabulary clamped silently, otherwise)."""
        arrays = []
        for name, value, rank in (("tokens", tokens, 2), ("lengths", lengths, 1)):
            try:
                value = np.asarray(value)
            except (TypeError, ValueError) as e:
                raise NetyError(f"{name}: not an array ({e})") from None
            if value.dtype.kind not in "iu" or value.ndim != rank or not value.size:
                raise NetyError(f"{name} must be a non-empty array of integers of rank {rank}, got "
                                f"{value.dtype}{list(value.shape)}")
            arrays.append(value)
        tokens, lengths = arrays
        b, t = tokens.shape
        vocab, fixed = self.config.model.vocab_size, self.info.get("batch")
        if isinstance(fixed, int) and fixed > 0 and b != fixed:
            raise NetyError(f"tokens: this export takes batches of {fixed}; got {b} rows")
        if lengths.shape != (b,) or lengths.min() < 1 or lengths.max() > t:
            raise NetyError(f"lengths must be {b} values in [1, {t}] (tokens is {b} x {t}), got "
                            f"{lengths.dtype}{list(lengths.shape)}")
        if tokens.min() < 0 or tokens.max() >= vocab:
            raise NetyError(f"tokens holds ids outside [0, {vocab})")
        return tokens.astype(np.int32), lengths.astype(np.int32)

    def generate_ids(self, texts, *args, **settings):
        """``generate_ids(texts, seed=0, num_samples=1, **settings)``, as ``Pretrained.generate_ids``:
        ``{"tokens": (R, N), "lengths": (R,), "scores": (R,)}`` numpy, R = len(texts) * num_samples
        rows, each text's samples in turn, N the compiled ``max_new_tokens``; the settings
        ``generate`` takes. Given an id batch instead of texts (numpy ``tokens, lengths, ...``: this
        method's arguments before ``call_ids`` had them), it returns what ``call_ids`` returns."""
        if isinstance(texts, (np.ndarray, jax.Array)):
            return self.call_ids(texts, *args, **settings)
        return self._generate_ids(texts, *args, **settings)

    def _generate_ids(self, texts: Sequence[str], seed=0, num_samples: int = 1, **settings) -> dict:
        texts = check_texts(texts)
        num_samples = self._check_request(settings, num_samples)
        if not texts:
            raise NetyError("texts: no prompt given")
        part = lambda texts, seed, settings, first_row, samples: [
            self._run(texts, seed, samples, settings, first_row, num_samples)[1]]
        parts = in_parts(part, texts, seed, num_samples, self._part_size(None), settings, flat=True)
        return {k: np.concatenate([part[i] for part in parts]) for i, k in enumerate(("tokens", "lengths", "scores"))}

    def generate(self, texts: Sequence[str], seed=0, num_samples: int = 1, with_prompt: bool = False,
                 batch_size: Optional[int] = None, **settings) -> list[list[str]]:
        """As ``Pretrained.generate``, with the settings the export takes at run time."""
        if isinstance(texts, str):
            texts = [texts]
        num_samples = self._check_request(settings, num_samples)
        with_prompt = check_bool("with_prompt", with_prompt)
        part = lambda texts, seed, settings, first_row, samples: self._generate(
            texts, seed, samples, with_prompt, settings, first_row, num_samples)
        return in_parts(part, texts, seed, num_samples, self._part_size(batch_size), settings)

    def _check_request(self, settings: dict, num_samples) -> int:
        """``num_samples``, checked, after the settings: only those the export takes at run time."""
        unsupported = sorted(k for k, v in settings.items() if v is not None and k not in self.info["options"])
        if unsupported:
            raise NetyError(f"this export does not take {unsupported[0]} at run time "
                            f"(it takes: {', '.join(self.info['options']) or 'nothing'}); re-export "
                            f"with --set decode.{unsupported[0]}=VALUE")
        num_samples = check_num_samples(num_samples)
        if num_samples > 1 and self.config.decode.beam_size > 1:
            raise NetyError(f"num_samples={num_samples}: this export runs beam search and returns one "
                            "reply per prompt; the N best replies need the run directory (--checkpoint)")
        return num_samples

    def _part_size(self, batch_size: Optional[int]) -> Optional[int]:
        """Rows per call: a fixed-batch export takes parts of at most its size."""
        fixed = self.info.get("batch")
        if isinstance(fixed, int) and fixed > 0:
            return fixed if batch_size is None else min(batch_size, fixed)
        return batch_size

    def _generate(self, texts: Sequence[str], seed, num_samples: int, with_prompt: bool, settings: dict,
                  first_row: int, of: int) -> list[list[str]]:
        """``num_samples`` replies per text from row ``first_row``, of ``of`` per text in all (fewer:
        a share of one text's samples, ``in_parts``)."""
        batch, (tokens, _, _) = self._run(texts, seed, num_samples, settings, first_row, of)
        replies = decode_replies(self.tokenizer, tokens, len(texts) * num_samples, batch if with_prompt else None)
        return [replies[i * num_samples: (i + 1) * num_samples] for i in range(len(texts))]

    def _run(self, texts: Sequence[str], seed, num_samples: int, settings: dict, first_row: int, of: int):
        """(the prompt batch, ``call_ids``' outputs cut to the rows asked) for ``num_samples`` rows a
        text, of ``of`` in all (a cut prompt is named once, by its first share)."""
        n = len(texts) * num_samples
        base = self.config.decode
        rows = {k: per_sample(v, num_samples) for k, v in settings.items() if k in RUNTIME}
        req = resolve(base, self.prompts, n, rows,
                      compiled_max=self.info["max_new_tokens"], static_fixed=True)
        fixed = self.info.get("batch")
        repeated = [t for t in texts for _ in range(num_samples)]
        batch = encode_prompts(self.prompts, self.tokenizer, repeated, self.config.data,
                               self.info["max_new_tokens"], fixed_batch=fixed if isinstance(fixed, int) else 0)
        for i in sorted({i // num_samples for i in batch.cut} if first_row % of == 0 else ()):  # as Pretrained's
            self.warn(f"warning: prompt {first_row // of + i + 1} was cut to {batch.tokens.shape[1]} "
                      f"tokens (the longest this {self._prompt_limit()})")
        b = batch.tokens.shape[0]
        rows = {k: v + [v[0]] * (b - len(v)) for k, v in req.rows.items()}
        seeds = seeds_per_row(seed, len(texts), num_samples)
        seeds = seeds if isinstance(seeds, int) else seeds + [seeds[0]] * (b - len(seeds))
        out = self.call_ids(batch.tokens, batch.lengths, seeds, first_row, **rows)
        return batch, tuple(x[:n] for x in out)

    def _prompt_limit(self) -> str:
        """Why prompts are cut where they are: a language model's export keeps room for the longest
        reply it was compiled for, which a new export with a shorter one gives back to prompts."""
        compiled = self.info["max_new_tokens"]
        if self.prompts.limit(self.config.data, compiled) >= self.prompts.limit(self.config.data, 1):
            return "model takes"
        return (f"export takes: model.max_len={self.config.model.max_len} less the {compiled}-token replies it "
                "was compiled for; export again with a smaller --set decode.max_new_tokens for longer prompts")


def load_exported(directory: str, warn: Callable[[str], None] = _stderr) -> ExportedModel:
    """An export directory's model; ``warn`` gets the warnings (a prompt cut to fit)."""
    if not os.path.isdir(directory):
        raise CheckpointError(f"{directory}: no such export directory")
    return ExportedModel(directory, warn)
