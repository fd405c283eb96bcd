"""A prefix cache: the prefill state of recent prompts, reused by prompts that start with them.

A chat re-sends its system prompt and history every turn, few-shot prompts share their examples:
their prefill is the same work each time. After a prefill, each prompt's state (the model's
``prompt_states``: a language model's keys and values or carries, the hybrid's encoder pass) is
kept under the exact tuple of its token ids. A later prompt takes the longest kept prompt that is
a proper prefix of its own ids ("prefix" reuse; the rest is prefilled after it) or, for a reused
encoder pass ("whole"), a kept prompt equal to its whole padded row. Keys are whole token tuples
compared for equality, never hashes alone: a state is served only to a prompt that truly begins
with (or is) the prompt it was computed for.

The cache holds at most ``max_bytes`` of device arrays; the least recently used entries go first.
A hit changes the floating-point order of the prefill (the suffix is computed apart), so a reply
may differ from an uncached one by rounding, as with vLLM's prefix caching.
"""
from __future__ import annotations

import collections
import dataclasses
import threading
from typing import Any, Callable, Optional

import jax
import numpy as np

from nety_jax.config.sections import PAD_ID
from nety_jax.data.prompts import bucket


def tree_bytes(tree) -> int:
    return int(sum(x.nbytes for x in jax.tree_util.tree_leaves(tree)))


@dataclasses.dataclass
class CacheStats:
    hits: int = 0  # prompts that started from a kept state
    misses: int = 0
    hit_tokens: int = 0  # prompt tokens not prefilled thanks to a hit
    prompt_tokens: int = 0  # prompt tokens looked up
    evictions: int = 0
    entries: int = 0
    bytes: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / max(self.hits + self.misses, 1)


class PrefixCache:
    """Prompt states keyed by exact token tuples, bounded in bytes, least recently used out first."""

    def __init__(self, max_bytes: int, reuse: str, cut: Optional[Callable[[Any, int], Any]] = None):
        """``cut(state, n)``: the state of a kept prompt's first ``n`` tokens (the model's
        ``cut_state``), or None: then only whole kept prompts serve as prefixes."""
        if reuse not in ("prefix", "whole"):
            raise ValueError(f"reuse must be 'prefix' or 'whole', not {reuse!r}")
        self.max_bytes, self.reuse, self.cut = int(max_bytes), reuse, cut
        self._entries: collections.OrderedDict[tuple, tuple[Any, int]] = collections.OrderedDict()
        self._lengths: collections.Counter = collections.Counter()  # key lengths kept (prefix lookups)
        self._lock = threading.Lock()
        self.stats = CacheStats()

    def lookup(self, ids) -> tuple[int, Optional[Any]]:
        """(tokens covered, state) for a prompt's ids; (0, None) on a miss."""
        ids = tuple(int(t) for t in ids)
        real = len(ids) if self.reuse == "prefix" else sum(1 for t in ids if t != PAD_ID)  # padding aside
        with self._lock:
            key, n = self._find(ids)
            self.stats.prompt_tokens += real
            if key is None:
                self.stats.misses += 1
                return 0, None
            self._entries.move_to_end(key)
            self.stats.hits += 1
            self.stats.hit_tokens += n if self.reuse == "prefix" else real
            state = self._entries[key][0]
        return n, (state if n == len(key) else self.cut(state, n))

    def _find(self, ids: tuple) -> tuple[Optional[tuple], int]:
        """(kept key, tokens of ``ids`` it covers): the longest kept proper prefix of ``ids`` or,
        with ``cut``, the kept prompt sharing the most first tokens with ``ids`` (all but one at
        most: the last must be prefilled for its logits)."""
        if self.reuse == "whole":
            return (ids, len(ids)) if ids in self._entries else (None, 0)
        if self.cut is not None:
            return self._longest_shared(ids)
        for n in sorted((n for n in self._lengths if n < len(ids)), reverse=True):
            if ids[:n] in self._entries:  # tuple equality: every token compared
                return ids[:n], n
        return None, 0

    def _longest_shared(self, ids: tuple) -> tuple[Optional[tuple], int]:
        best, best_n = None, 0
        for key in self._entries:
            n = min(len(key), len(ids) - 1)
            differ = np.flatnonzero(np.asarray(key[:n]) != np.asarray(ids[:n]))
            n = int(differ[0]) if len(differ) else n
            if n > best_n:
                best, best_n = key, n
        return best, best_n

    def store(self, ids, state) -> bool:
        """Keeps ``state`` for ``ids`` (False when it alone is over the bound)."""
        ids, size = tuple(int(t) for t in ids), tree_bytes(state)
        if size > self.max_bytes or not ids:
            return False
        with self._lock:
            if ids in self._entries:
                self._drop(ids)
            while self._entries and self.stats.bytes + size > self.max_bytes:
                self._drop(next(iter(self._entries)))
                self.stats.evictions += 1
            self._entries[ids] = (state, size)
            self._lengths[len(ids)] += 1
            self.stats.bytes += size
            self.stats.entries = len(self._entries)
        return True

    def _drop(self, key: tuple) -> None:
        _, size = self._entries.pop(key)
        self._lengths[len(key)] -= 1
        if not self._lengths[len(key)]:
            del self._lengths[len(key)]
        self.stats.bytes -= size
        self.stats.entries = len(self._entries)

    def clear(self) -> None:
        with self._lock:
            for key in list(self._entries):
                self._drop(key)


def make_cache(model, megabytes: float) -> Optional[PrefixCache]:
    """A cache of ``megabytes`` for ``model`` (an adapter), or None (0 MB, or nothing to reuse)."""
    if megabytes < 0:
        raise ValueError(f"the prefix cache size must be >= 0 MB, got {megabytes}")
    if not megabytes or model.reuse == "none":
        return None
    cut = model.cut_state if model.reuse == "prefix" and model.states_cut else None
    return PrefixCache(int(megabytes * 2 ** 20), model.reuse, cut)


def _row_key(cache: PrefixCache, tokens: np.ndarray, lengths: np.ndarray, i: int, width: int) -> tuple:
    """A prompt's key: its ids ("prefix"), or its whole row padded to ``width`` ("whole")."""
    if cache.reuse == "prefix":
        return tuple(tokens[i, : lengths[i]])
    return tuple(tokens[i, : lengths[i]]) + (0,) * (width - int(lengths[i]))


def through_cache(cache: Optional[PrefixCache], model, tokens: np.ndarray, lengths: np.ndarray, count: int,
                  run: Callable, run_from: Callable, bucket_multiple: int = 8, width: Optional[int] = None):
    """A prefill through ``cache``: ``run(tokens, lengths)`` (device arrays) on a miss,
    ``run_from(states, tokens, lengths)`` from the states kept for the first ``count`` rows
    (what follows them, for "prefix" reuse); whatever either returns, its ``.cache`` is the
    prefill's, from which every row's whole prompt state is kept. ``width``: the padded width
    the model encodes a whole prompt at ("whole" keys; the batch's width by default)."""
    import jax.numpy as jnp
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    if cache is None:
        return run(jnp.asarray(tokens), jnp.asarray(lengths))
    keys = [_row_key(cache, tokens, lengths, i, width or tokens.shape[1]) for i in range(count)]
    found = [cache.lookup(k) for k in keys]
    usable = any(n for n, _ in found) if cache.reuse == "prefix" else all(n for n, _ in found)
    if not usable:
        out = run(jnp.asarray(tokens), jnp.asarray(lengths))
    else:
        states = model.join_states([s for _, s in found], tokens.shape[0])
        if cache.reuse == "prefix":
            tokens, lengths = _suffixes(tokens, lengths, [n for n, _ in found], bucket_multiple)
        out = run_from(states, jnp.asarray(tokens), jnp.asarray(lengths))
    for key, row_state in zip(keys, model.prompt_states(out.cache, count)):
        cache.store(key, row_state)
    return out


def prefill(cache: Optional[PrefixCache], model, variables, tokens: np.ndarray, lengths: np.ndarray,
            count: int, params, spec, bucket_multiple: int = 8):
    """The loop state after a prefill and the first token (``decoding.start_stream``), starting
    each of the first ``count`` rows from the longest state ``cache`` keeps for it, then keeping
    every row's whole prompt state. Without a cache, exactly ``start_stream``."""
    import jax.numpy as jnp
    from nety_jax.decoding import start_stream, start_stream_from
    run = lambda t, n: start_stream(variables, t, n, params, model=model, spec=spec)
    prompt = (jnp.asarray(tokens), jnp.asarray(lengths))
    run_from = lambda states, t, n: start_stream_from(variables, states, t, n, params, *prompt, model=model,
                                                      spec=spec)
    return through_cache(cache, model, tokens, lengths, count, run, run_from, bucket_multiple)


def _suffixes(tokens: np.ndarray, lengths: np.ndarray, covered: list, multiple: int):
    """Each row's tokens after the ``covered`` ones, right-padded to a bucketed width (rows past
    ``covered``, the fillers, keep their whole prompt)."""
    covered = list(covered) + [0] * (len(tokens) - len(covered))
    rest_lengths = np.asarray([max(int(n) - c, 1) for n, c in zip(lengths, covered)], np.int32)
    rest = np.zeros((len(tokens), bucket(int(rest_lengths.max()), multiple)), np.int32)
    for i, c in enumerate(covered):
        rest[i, : rest_lengths[i]] = tokens[i, c: c + rest_lengths[i]]
    return rest, rest_lengths


class CacheCollector:
    """A Prometheus collector of a prefix cache's counters (read when /metrics is scraped)."""

    def __init__(self, cache: PrefixCache):
        self.cache = cache

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        s = self.cache.stats
        for name, doc, value in (("hits", "prompts that started from a kept prefill state", s.hits),
                                 ("misses", "prompts with no kept state to start from", s.misses),
                                 ("hit_tokens", "prompt tokens not prefilled thanks to a hit", s.hit_tokens),
                                 ("prompt_tokens", "prompt tokens looked up", s.prompt_tokens),
                                 ("evictions", "states evicted to stay within the bound", s.evictions)):
            yield CounterMetricFamily(f"nety_prefix_cache_{name}", doc, value=value)
        yield GaugeMetricFamily("nety_prefix_cache_bytes", "bytes of kept states", value=s.bytes)
        yield GaugeMetricFamily("nety_prefix_cache_entries", "kept states", value=s.entries)
        yield GaugeMetricFamily("nety_prefix_cache_max_bytes", "the bound (--prefix-cache-mb)",
                                value=self.cache.max_bytes)
