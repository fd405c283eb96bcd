"""Decode settings of a request: which are runtime arrays, which shape the compiled program.

Runtime (per row, never a recompile): temperature, top_k, top_p, max_new_tokens
(up to the compiled maximum) and the seed. Static: the compiled maximum of new
tokens, top_k_max, beam_size, length_penalty, min_new_tokens, no_repeat_ngram,
ignore_eos. Every value is validated with the field's name. ``for_these_rows`` marks a call whose
rows are all greedy (``LoopSpec.greedy_only``): its program holds no sampler, compiled once.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence, Union

import numpy as np

from nety_jax.config.sections import DecodeConfig
from nety_jax.data.prompts import check_prompt
from nety_jax.decoding.spec import DERIVED, LoopSpec
from nety_jax.errors import ConfigError, NetyError

RUNTIME = ("temperature", "top_k", "top_p", "max_new_tokens")
MAX_SEED = 2 ** 63 - 1  # as the server's field says; every bit of it reaches the key (decoding.keys.seed_keys)
STATIC = tuple(f.name for f in dataclasses.fields(LoopSpec) if f.name != "max_new_tokens" and f.name not in DERIVED)


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


@dataclasses.dataclass
class Request:
    """Resolved settings for a batch of rows: the static spec and per-row runtime values."""

    spec: LoopSpec
    rows: dict  # name -> list of per-row values (temperature, top_k, top_p, max_new_tokens)


def _per_row(name: str, value, n: int) -> list:
    if isinstance(value, (list, tuple, np.ndarray)):
        if len(value) != n:
            raise NetyError(f"{name}: {len(value)} values for {n} prompts")
        return [v.item() if isinstance(v, np.generic) else v for v in value]
    return [value.item() if isinstance(value, np.generic) else value] * n


def resolve(base: DecodeConfig, policy, n: int, overrides: dict,
            compiled_max: Optional[int] = None, static_fixed: bool = False) -> Request:
    """Settings for ``n`` rows from the defaults ``base`` and ``overrides`` (None = default;
    runtime values may be per-row sequences). ``compiled_max`` fixes the compiled maximum
    (an exported artifact); otherwise it is the default or the next power of two that fits."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(overrides) - set(RUNTIME) - set(STATIC)
    if unknown:
        raise NetyError(f"unknown decode setting {sorted(unknown)[0]!r}")
    static = {k: v for k, v in overrides.items() if k in STATIC}
    if static_fixed and any(v != getattr(base, k) for k, v in static.items()):
        name = sorted(static)[0]
        raise NetyError(f"decode.{name} is fixed when this artifact was exported "
                        f"({getattr(base, name)!r}); re-export to change it")
    rows = {name: _per_row(name, overrides.get(name, getattr(base, name)), n) for name in RUNTIME}
    try:
        for i in range(n):
            dcfg = dataclasses.replace(base, **static, **{k: v[i] for k, v in rows.items()})
            dcfg.validate()
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid decode setting ({e})") from None
    limit = policy.max_new_tokens()
    longest = max(rows["max_new_tokens"])
    if longest > limit:
        raise NetyError(f"max_new_tokens={longest} is more than this model can produce "
                        f"(model.max_len={policy.model_cfg.max_len} allows {limit})")
    beam = static.get("beam_size", base.beam_size) > 1
    if compiled_max is None:  # beam search has no per-row limit: its maximum is the request
        compiled_max = longest if beam else min(max(base.max_new_tokens, _pow2(longest)), limit)
    elif longest > compiled_max:
        raise NetyError(f"max_new_tokens={longest} is more than the compiled maximum of {compiled_max} "
                        "(an export fixes it: re-export with --set decode.max_new_tokens=N)")
    spec = dataclasses.replace(LoopSpec.from_config(dataclasses.replace(base, **static)),
                               max_new_tokens=compiled_max)
    return Request(spec, rows)


def fit_prompts(req: Request, width: int, policy) -> Request:
    """``req`` with its compiled maximum (a power of two above the longest row's request) within
    the room prompts ``width`` tokens wide leave; never below what a row asked for, since prompts
    are cut for the longest request, not for that rounded maximum (which cut a 16-token prompt
    to its last 2 tokens when 49 new ones were asked of a 64-position GPT)."""
    room = policy.reply_room(width)
    if req.spec.max_new_tokens <= room:
        return req
    return dataclasses.replace(req, spec=dataclasses.replace(req.spec, max_new_tokens=room))


def for_these_rows(req: Request) -> Request:
    """``req`` with ``greedy_only`` set when every row is greedy (temperature 0 or top_k 1): the
    program then holds the argmax and no sampler. Only for a call that runs exactly these rows
    (``Pretrained``), not for a server's spec, which rows yet to come share."""
    greedy = all(t == 0 or k == 1 for t, k in zip(req.rows["temperature"], req.rows["top_k"]))
    if not greedy or req.spec.beam_size > 1:
        return req
    return dataclasses.replace(req, spec=dataclasses.replace(req.spec, greedy_only=True))


def per_sample(value, num_samples: int):
    """A per-text setting (list, tuple or array) with each text's value repeated for its
    ``num_samples`` rows; one value for the batch as it is."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return [x for x in value for _ in range(num_samples)]
    return value


def seeds_per_row(seed: Union[int, Sequence[int]], n_texts: int, num_samples: int):
    """One seed for the batch (row i draws from fold_in(seed, i)) or one per prompt (sample j of
    prompt i from seed_i + j)."""
    if isinstance(seed, (list, tuple, np.ndarray)):
        if len(seed) != n_texts:
            raise NetyError(f"seed: {len(seed)} values for {n_texts} prompts")
        return [_check_seed(_check_seed(s) + j) for s in seed for j in range(num_samples)]
    return _check_seed(seed)


# -- arguments of the public API and the server's options: one check each, naming the argument --

def _bounds(low, high) -> str:
    if high is None:
        return f">= {low}"
    return f"between {low} and {high}"


def check_int(name: str, value, low: int, high: Optional[int] = None) -> int:
    """An integer in [low, high] (no bool, no float, no text), or a NetyError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise NetyError(f"{name}={value!r} must be an integer {_bounds(low, high)}")
    if value < low or (high is not None and value > high):
        raise NetyError(f"{name}={value} must be {_bounds(low, high)}")
    return int(value)


def check_float(name: str, value, low: float, high: float) -> float:
    """A finite number in [low, high], or a NetyError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise NetyError(f"{name}={value!r} must be a number {_bounds(low, high)}")
    if not (math.isfinite(value) and low <= value <= high):
        raise NetyError(f"{name}={value} must be a finite number {_bounds(low, high)}")
    return float(value)


def check_bool(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise NetyError(f"{name}={value!r} must be True or False")
    return bool(value)


def check_batch(batch, example: dict, vocab_size: int) -> dict:
    """An id batch of the model's format (``example``'s keys and ranks, besides targets) as int32
    arrays, ids in [0, vocab_size), or a NetyError naming the key."""
    need = sorted(k for k in example if k != "targets")
    if not isinstance(batch, dict):
        raise NetyError(f"batch must be a dict with keys {need}, got {type(batch).__name__}")
    missing = [k for k in need if k not in batch]
    if missing:
        raise NetyError(f"batch[{missing[0]!r}] is missing (this model takes {need})")
    out = {}
    for key in need:
        try:
            value = np.asarray(batch[key])
        except (TypeError, ValueError) as e:
            raise NetyError(f"batch[{key!r}]: not an array ({e})") from None
        if value.dtype.kind not in "iu" or value.ndim != np.ndim(example[key]):
            raise NetyError(f"batch[{key!r}] must be integers of rank {np.ndim(example[key])}, got "
                            f"{value.dtype}{list(value.shape)}")
        if value.ndim == 2 and value.size and not (0 <= value.min() and value.max() < vocab_size):
            raise NetyError(f"batch[{key!r}] holds ids outside [0, {vocab_size})")
        out[key] = value.astype(np.int32)
    return {**{k: v for k, v in batch.items() if k not in out}, **out}  # other keys (segments) as given


def check_texts(texts) -> list:
    """Prompts as a list: one text or an iterable of texts, each checked, numbered as given."""
    if isinstance(texts, str):
        texts = [texts]
    try:
        texts = list(texts)
    except TypeError:
        raise NetyError(f"texts must be a list of prompts, got {type(texts).__name__}") from None
    for i, text in enumerate(texts):
        check_prompt(i, text)
    return texts


def in_parts(generate_part, texts: Sequence[str], seed, num_samples: int, batch_size: Optional[int],
             settings: dict, split_samples: bool = True, flat: bool = False) -> list:
    """Replies of ``generate_part(texts, seed, settings, first_row, samples)`` over the parts
    ``chunks`` cuts, joined; the prompts are checked first, numbered as given. No prompts, no
    replies. A text whose ``num_samples`` rows alone are more than ``batch_size`` goes in shares of
    at most ``batch_size`` samples (``samples`` rows each, from its row ``first_row``; a per-text
    seed moved on so that sample j still draws from seed + j): the same replies as one call. Not
    with ``split_samples`` False (beam search's N best replies are one search). ``flat``: the
    parts' results in a list as they come (whatever ``generate_part`` returns in a one-item list)."""
    texts = check_texts(texts)
    replies = []
    for first_row, part, part_seed, part_settings in chunks(texts, seed, num_samples, batch_size, settings):
        if not split_samples or batch_size is None or num_samples <= batch_size:
            replies += generate_part(part, part_seed, part_settings, first_row, num_samples)
            continue
        if not flat:
            replies.append([])  # chunks gives such a text alone: its replies, share by share
        for j in range(0, num_samples, batch_size):
            share_seed = [_check_seed(_check_seed(part_seed[0]) + j)] if isinstance(
                part_seed, (list, tuple, np.ndarray)) else part_seed
            got = generate_part(part, share_seed, part_settings, first_row + j, min(batch_size, num_samples - j))
            if flat:
                replies += got
            else:
                replies[-1] += got[0]
    return replies


def chunks(texts: Sequence[str], seed, num_samples: int, batch_size: Optional[int], settings: dict):
    """``(first row, texts, seed, settings)`` of each call when at most ``batch_size`` rows
    (prompts times samples; None: all) go through the model at once. Per-text values are cut
    with their texts, and the first row's index keeps a single seed's draws what they are whole."""
    if batch_size is not None:
        check_int("batch_size", batch_size, 1)
    per_text = lambda v: isinstance(v, (list, tuple, np.ndarray))
    for name, value in list(settings.items()) + [("seed", seed)]:
        if per_text(value) and len(value) != len(texts):
            raise NetyError(f"{name}: {len(value)} values for {len(texts)} prompts")
    step = max(1, len(texts) if batch_size is None else batch_size // num_samples)
    for a in range(0, len(texts), step):
        cut = lambda v: v[a: a + step] if per_text(v) else v
        yield a * num_samples, texts[a: a + step], cut(seed), {k: cut(v) for k, v in settings.items()}


def check_num_samples(num_samples) -> int:
    return check_int("num_samples", num_samples, 1)


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise NetyError(f"seed={seed!r} must be an integer between 0 and 2**63 - 1 (or one per prompt)")
    if not 0 <= seed <= MAX_SEED:
        raise NetyError(f"seed={seed} must be between 0 and 2**63 - 1")
    return int(seed)

