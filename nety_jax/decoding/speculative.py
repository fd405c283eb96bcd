"""Speculative decoding with prompt-lookup drafts: several tokens per model call, same replies.

Each iteration of ONE ``lax.while_loop`` drafts K tokens per row by finding the row's
last n tokens (n = 3, else 2) earlier in its prompt and reply and copying what
followed them (prompt lookup: summaries, edits and chat histories repeat their context),
feeds the last token and the draft to the model in one forward (``Model.decode_steps``),
and keeps the longest accepted prefix of the draft plus one token of the model's own.
Rows accept different counts; each row's cache keeps exactly its accepted tokens
(``Model.keep_steps``). Tokens for which no row verifies a draft come from an inner loop of the
model's own one-token step (``decode_step``) and plain sampling, so text that does not repeat pays
only the lookup; a verification of greedy rows only compares the argmax with the draft (the
distributions below are built only when some row samples).

A draft is verified only when its expected kept tokens repay what a verification costs more than
the plain step it replaces (``GAIN`` plain steps; the costs: docs/PERFORMANCE.md). Each row
estimates the chance that a drafted token is kept, in two contexts (the first token of a draft,
after a token that was not predicted; a token after a kept one), from discounted counts of what
happened to its drafts: the verified ones, and the ones it did not verify, checked for free
against the tokens its plain steps then chose ("shadow" drafts: for a sampled row the chance
that the chosen token is the drafted one is exactly the chance that a verification keeps it).
The counts start from a conservative prior that trusts a match of 3 ids more than one of 2 (a
reply that starts copying verifies at its first 3-id match; one that shares only pairs of ids
with its prompt waits for its shadows to be kept). The expected kept tokens of an n-token draft
are a1 (1 + q + ... + q^(n-1)), a1 the first-token chance in the row's context, q the chance after
a kept token. Which drafts are verified depends only on the row's past tokens, so every emitted
token is still drawn exactly as below.

Draft lengths adapt per row (the "heuristic" schedule of Hugging Face's assisted generation):
a row starts at DRAFT_START tokens (at most ``draft_tokens``), drafts 2 more after a draft kept
whole and 1 fewer after one that was not, between DRAFT_START and ``draft_tokens``; a draft also
stops where the row's text does. A verification runs at the narrowest of ``widths`` that holds
every verifying row's draft: 4, and ``draft_tokens`` above it. Not more: on XLA's CPU backend
every compiled width adds to the fixed cost of EVERY call, verifying or not (tens of
microseconds: docs/PERFORMANCE.md), which only a model whose step costs milliseconds repays, so
drafts of up to 4 (the default) compile one width, and longer ones (up to 7 for the 8-row
product kernel) two.

Acceptance is the speculative-sampling rule (Leviathan et al. 2023, Chen et al. 2023)
with a deterministic draft, i.e. q a point mass on the drafted token d: keep d with
probability min(1, p(d) / q(d)) = p(d); on rejection draw from the normalised residual
max(0, p - q), which is p without d; after K kept tokens draw one more from p. Every
emitted token is thus distributed exactly as plain sampling draws it. p is the plain
sampler's own distribution (``sampling.probabilities``: temperature, top-k, top-p,
min_new_tokens), so a greedy row (p one-hot on the argmax) keeps d exactly when d is
the argmax and emits what plain greedy decoding emits.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from nety_jax.config.sections import EOS_ID, PAD_ID
from nety_jax.decoding.loop import adjust_logits, chosen_log_prob, finish
from nety_jax.decoding.sampling import SamplingParams, draw_from, probabilities, row_uniforms, sample_rows
from nety_jax.decoding.spec import LoopSpec

NGRAMS = (3, 2)  # lookup sizes, the longest match first (a match of one id drafts too poorly to pay)
GAIN = 0.75  # expected kept drafted tokens that repay a verification (its cost less one plain step)
FIRST_PRIOR = {2: 0.3, 3: 0.5}  # the prior chance that a draft's first token is kept, by ids matched
NEXT_PRIOR = 0.5  # the prior chance that a drafted token after a kept one is kept
PRIOR_WEIGHT = 2.0  # the prior counts as this many observations
DECAY = 0.9  # each update discounts a row's earlier observations by this factor
DRAFT_START = 2  # a row's first and shortest draft (at most ``draft_tokens``); the schedule moves it
# (B, T) tokens, cache -> ((B, T, V) logits, pending); (pending, (B,) kept counts) -> cache
Steps = Callable[[jax.Array, Any], tuple[jax.Array, Any]]
Keep = Callable[[Any, jax.Array], Any]
Step = Callable[[jax.Array, Any], tuple[jax.Array, Any]]  # (B,) last ids, cache -> ((B, V) logits, cache)


@struct.dataclass
class SpecState:
    history: jax.Array  # (B, S + N + K + 1) int32: the prompt, then the reply, pad after
    start: jax.Array  # (B,) int32: where each row's reply begins in ``history``
    cache: Any
    count: jax.Array  # (B,) int32: tokens generated per row
    done: jax.Array  # (B,) bool
    logprob: jax.Array  # (B,) float32: sum of the model's log-probabilities of the chosen tokens
    params: SamplingParams
    calls: jax.Array  # () int32: model calls made by the loop
    drafted: jax.Array  # (B,) int32: tokens drafted and verified
    accepted: jax.Array  # (B,) int32: drafted tokens kept
    draft_len: jax.Array  # (B,) int32: the length of the row's next draft (1..draft_tokens)
    counts: jax.Array  # (B, 4) float32, discounted drafted tokens: [checked, kept] as the first of a
    # draft (or after a token no draft predicted), then [checked, kept] after a kept one
    after_kept: jax.Array  # (B,) bool: the row's last token was a drafted (or shadow-drafted) token kept
    cont: jax.Array  # (B,) int32: where the draft for the row's next token starts in ``history``; -1 none
    length: jax.Array  # (B,) int32: the draft the row verifies next; 0: it takes a plain step

    @property
    def pos(self) -> jax.Array:
        """() the fewest tokens any unfinished row has (the compiled maximum when all are done)."""
        return jnp.min(jnp.where(self.done, self.history.shape[1], self.count))


def ngram_lookup(history: jax.Array, end: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One row: (H,) ids of which ``end`` are written -> (() int32: where the continuation of the
    latest earlier occurrence of the row's last n ids starts, n as long as NGRAMS allows, -1 if
    none; () int32: that n, 0 if none)."""
    return _decoded(_lookup_score(history, end), history.shape[0])


def _lookup_score(history: jax.Array, end: jax.Array) -> jax.Array:
    """``ngram_lookup`` as one score: -1, or the band of n shifted above the continuation's bits.

    ``match`` says, for every candidate j (the last id of an earlier occurrence), whether the ids
    at j, j - 1, ... equal the row's last ids; each n in NGRAMS scores its matches j + 1 in its own
    band (longer n above), so ONE max over the history picks the longest n, then the latest j:
    the lookup runs after every token, as one fusion.
    Candidates end before the row's last id, so the draft starts in the written part."""
    h = history.shape[0]
    bits = _bits(h)
    tail = history[jnp.maximum(end - 1 - jnp.arange(max(NGRAMS)), 0)]  # the last id first
    j = _positions(h)
    match = j + 1 < end
    score = jnp.full((h,), -1, jnp.int32)
    for i in range(max(NGRAMS)):
        earlier = jnp.pad(history[:h - i], (i, 0))  # earlier[j] = history[j - i]
        match = match & (earlier == tail[i]) & (j >= i) & (end > i)
        if i + 1 in NGRAMS:
            band = sorted(NGRAMS).index(i + 1) << bits
            score = jnp.maximum(score, jnp.where(match, j + (1 + band), -1))
    return jnp.max(score)


def _positions(h):
    """(h,) int32 0..h-1 as a constant where ``h`` is static. XLA hoists an iota's loop-invariant
    uses (j >= i, j + 1 + band) out of the decoding loops as operations with no inputs, ready when
    a call starts; once more than 8 are ready at a time, XLA's CPU runtime hands half of them to
    another thread, and a small model's call then waits on it (docs/PERFORMANCE.md). A constant's
    uses are folded at compile time. A symbolic ``h`` (an export) gets the iota."""
    return jnp.asarray(np.arange(h, dtype=np.int32)) if isinstance(h, int) else jnp.arange(h, dtype=jnp.int32)


def _bits(h) -> int:
    """Bits that hold a continuation in a history of ``h`` ids (shifts and masks, where a division
    is an operation XLA does not fuse). A symbolic ``h`` (an export's prompt length) gets the most
    an int32 score leaves room for beside its band."""
    return max(h, 1).bit_length() if isinstance(h, int) else 24


def _decoded(score: jax.Array, h: int) -> tuple[jax.Array, jax.Array]:
    """A ``_lookup_score`` -> (the continuation or -1, the ids matched or 0), elementwise."""
    band = jnp.right_shift(jnp.maximum(score, 0), _bits(h))
    matched = sum(jnp.where(band == i, n, 0) for i, n in enumerate(sorted(NGRAMS)))
    cont = jnp.bitwise_and(score, (1 << _bits(h)) - 1)
    return jnp.where(score >= 0, cont, -1).astype(jnp.int32), jnp.where(score >= 0, matched, 0).astype(jnp.int32)


def widths(draft_tokens: int) -> tuple[int, ...]:
    """The draft widths a verification is compiled at (each compiles the model's forward once
    more, and a bigger program costs more per call: the module's docstring)."""
    return tuple(w for w in (4,) if w < draft_tokens) + (draft_tokens,)


def _adjusted(logits, s: SpecState, spec: LoopSpec):
    """(B, T, V) logits at positions count..count+T-1 -> float32 logits as plain sampling sees them."""
    b, t, v = logits.shape
    pos = (s.count[:, None] + jnp.arange(t)[None, :]).reshape(-1)
    return adjust_logits(logits.reshape(b * t, v).astype(jnp.float32), None, pos, spec).reshape(b, t, v)


def _scores(logits, ids):
    """(B, T, V) logits, (B, T) ids -> (B, T) the log-probabilities of those ids."""
    picked = jnp.take_along_axis(logits, ids[..., None], axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)


def accept_greedy(logits: jax.Array, draft: jax.Array):
    """``accept`` for greedy rows, whose distributions are one-hot on the argmax: a drafted id is
    kept while it is the argmax, and the model's own id is the argmax after the kept ones.
    logits (B, K+1, V), draft (B, K) -> (emitted ids (B, K+1), kept draft counts (B,))."""
    target = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    k = draft.shape[1]
    kept = _leading(target[:, :k] == draft)
    return jnp.where(jnp.arange(k + 1)[None, :] <= kept[:, None], target, PAD_ID), kept


def _leading(ok: jax.Array) -> jax.Array:
    """(B, K) bool -> (B,) int32: how many leading entries of each row hold (one reduction, where
    a cumulative product is a reduce-window)."""
    miss = jnp.concatenate([~ok, jnp.ones_like(ok[:, :1])], axis=1)
    return jnp.argmax(miss, axis=1).astype(jnp.int32)


def accept_sampled(logits: jax.Array, draft: jax.Array, params: SamplingParams, count, spec: LoopSpec):
    """``accept`` on the distributions plain sampling draws from (any row's settings)."""
    b, t, v = logits.shape
    per_position = jax.tree_util.tree_map(lambda x: jnp.repeat(x, t, axis=0), params)
    probs = probabilities(logits.reshape(b * t, v), per_position, spec.top_k_max).reshape(b, t, v)
    return accept(probs, draft, params, count)


def accept(probs: jax.Array, draft: jax.Array, params: SamplingParams, count: jax.Array):
    """The acceptance rule. probs (B, K+1, V): plain sampling's distributions after the last
    token and after each draft prefix; draft (B, K) -> (emitted ids (B, K+1): the kept drafts,
    then the model's own token, pad after; kept draft counts (B,))."""
    b, t, v = probs.shape
    k = t - 1
    positions = count[:, None] + jnp.arange(k)[None, :]
    uniform = jax.vmap(lambda steps: row_uniforms(params.key, steps), in_axes=1, out_axes=1)(positions)
    p_draft = jnp.take_along_axis(probs[:, :k], jnp.maximum(draft, 0)[..., None], axis=-1)[..., 0]
    kept = _leading(uniform < jnp.where(draft >= 0, p_draft, 0.0))  # a negative id: no draft there
    p_next = jnp.take_along_axis(probs, kept[:, None, None], axis=1)[:, 0]
    if k > 0:
        rejected = jnp.take_along_axis(draft, jnp.minimum(kept, k - 1)[:, None], axis=1)
        residual = jnp.where((kept < k)[:, None] & (jnp.arange(v)[None, :] == rejected), 0.0, p_next)
        p_next = jnp.where(jnp.sum(residual, axis=-1, keepdims=True) > 0, residual, p_next)
    nxt = draw_from(p_next, row_uniforms(params.key, count + kept, stream=1))
    idx = jnp.arange(t)[None, :]
    padded = jnp.pad(draft, ((0, 0), (0, 1)))
    out = jnp.where(idx < kept[:, None], padded, jnp.where(idx == kept[:, None], nxt[:, None], PAD_ID))
    return out.astype(jnp.int32), kept


def _emit(s: SpecState, out, kept, scores, spec: LoopSpec) -> SpecState:
    """Writes each row's emitted ids, cut at its length limit and after <eos>."""
    idx = jnp.arange(out.shape[1])[None, :]
    limit = jnp.minimum(s.params.max_new_tokens, spec.max_new_tokens)
    n = jnp.where(s.done, 0, jnp.minimum(kept + 1, jnp.maximum(limit - s.count, 0)))
    ended = jnp.zeros_like(s.done)
    if not spec.ignore_eos:
        is_eos = (out == EOS_ID) & (idx < n[:, None])
        ended = jnp.any(is_eos, axis=1)
        n = jnp.where(ended, jnp.argmax(is_eos, axis=1) + 1, n)
    out = jnp.where(idx < n[:, None], out, PAD_ID)
    write = jax.vmap(lambda h, x, at: jax.lax.dynamic_update_slice_in_dim(h, x, at, 0))
    count = s.count + n
    return s.replace(history=write(s.history, out, s.start + s.count), count=count,
                     done=s.done | ended | (count >= limit),
                     logprob=s.logprob + jnp.sum(jnp.where(idx < n[:, None], scores, 0.0), axis=1),
                     accepted=s.accepted + jnp.where(s.length > 0, jnp.minimum(kept, n), 0), calls=s.calls + 1)


def _observe(s: SpecState, seen, first_kept, more_seen, more_kept) -> SpecState:
    """Adds what a row's draft (verified or shadow) showed to its discounted counts: ``seen`` (B,)
    bool, whether its first token was checked, in the row's context; ``first_kept`` whether it was
    kept; ``more_seen`` / ``more_kept`` (B,) the tokens checked / kept after a kept one."""
    col = np.arange(4)[None, :]  # numpy: the masks below are constants, not hoisted operations (_positions)
    # the context of the draft's first token: columns 0-1 after a token no draft predicted, else 2-3
    first = ((col < 2) != s.after_kept[:, None]) & seen[:, None]
    add = (jnp.where(first, jnp.where(col % 2 == 0, 1.0, first_kept[:, None].astype(jnp.float32)), 0.0)
           + jnp.where(seen[:, None] & (col >= 2), jnp.where(col == 2, more_seen[:, None], more_kept[:, None]),
                       0).astype(jnp.float32))
    checked = jnp.where(col < 2, add[:, :1], add[:, 2:3])  # each context's tokens checked
    return s.replace(counts=DECAY ** checked * s.counts + add)  # discounted once per token checked


def _expected_kept(counts, after_kept, matched, n, spec: LoopSpec) -> jax.Array:
    """(B,) the tokens a row expects to keep of an ``n``-token draft (``n`` (B,) int32) from its
    ``counts`` and the prior (``FIRST_PRIOR`` by the ``matched`` ids, ``NEXT_PRIOR``)."""
    first_prior = jnp.asarray([FIRST_PRIOR.get(i, 0.0) for i in range(max(NGRAMS) + 1)], jnp.float32)[matched]
    first_rate = (counts[:, 1] + PRIOR_WEIGHT * first_prior) / (counts[:, 0] + PRIOR_WEIGHT)
    next_rate = (counts[:, 3] + PRIOR_WEIGHT * NEXT_PRIOR) / (counts[:, 2] + PRIOR_WEIGHT)
    more = sum(jnp.where(i < n, next_rate ** i, 0.0) for i in range(spec.draft_tokens))
    return jnp.where(after_kept, next_rate, first_rate) * more


def _width(length: jax.Array, spec: LoopSpec) -> jax.Array:
    """(B,) draft lengths -> the narrowest compiled width that holds each."""
    ws = widths(spec.draft_tokens)
    width = jnp.full_like(length, ws[-1])
    for w in ws[-2::-1]:
        width = jnp.where(length <= w, w, width)
    return width


def _look(s: SpecState, spec: LoopSpec) -> SpecState:
    """Each row's draft for its next token, and whether it is worth verifying (``length`` > 0):
    its expected kept tokens reach ``GAIN``."""
    end = s.start + s.count
    cont, matched = _decoded(jax.vmap(_lookup_score)(s.history, end), s.history.shape[1])
    length = jnp.minimum(s.draft_len, end - cont)  # a draft stops where the row's text does
    n = jnp.minimum(_width(length, spec), end - cont)
    worth = _expected_kept(s.counts, s.after_kept, matched, n, spec) >= GAIN
    return s.replace(cont=cont, length=jnp.where((cont >= 0) & ~s.done & worth, length, 0))


def _pace(s: SpecState, looked, kept, length, spec: LoopSpec) -> SpecState:
    """The next draft of a row that verified is 2 tokens longer if this one (``length`` tokens)
    was kept whole, else 1 shorter."""
    grown = jnp.where(kept >= length, s.draft_len + 2, s.draft_len - 1)
    return s.replace(draft_len=jnp.where(looked, jnp.clip(grown, min(DRAFT_START, spec.draft_tokens),
                                                             spec.draft_tokens), s.draft_len))


def _last(s: SpecState) -> jax.Array:
    return jnp.take_along_axis(s.history, (s.start + s.count)[:, None] - 1, axis=1)


def _greedy(s: SpecState) -> jax.Array:
    """() whether every unfinished row chooses greedily (its verification needs no distributions)."""
    return jnp.all((s.params.temperature <= 0) | (s.params.top_k == 1) | s.done)


def _verify(steps: Steps, keep: Keep, spec: LoopSpec, draft, s: SpecState) -> SpecState:
    """Verifies each row's draft (B, W) in one call and emits what is kept. A row's tokens are
    the ones it gets alone, whatever the other rows: a row verifies only its draft at the width
    it would have alone (the rest of the call's width is masked), and a row that does not verify
    takes its token as the plain step draws it, and learns from its draft as that step does
    (``_plain``)."""
    logits, pending = steps(jnp.concatenate([_last(s), draft], axis=1), s.cache)
    logits = _adjusted(logits, s, spec)
    looked, length, w = s.length > 0, s.length, draft.shape[1]
    own = jnp.where(looked, jnp.minimum(_width(length, spec), w), 0)
    draft = jnp.where(jnp.arange(w)[None, :] < own[:, None], draft, -1)  # -1: never kept
    if spec.greedy_only:
        out, kept = accept_greedy(logits, draft)
    else:
        out, kept = jax.lax.cond(_greedy(s), lambda: accept_greedy(logits, draft),
                                 lambda: accept_sampled(logits, draft, s.params, s.count, spec))
    plain = sample_rows(logits[:, 0], s.params, s.count, spec.top_k_max, spec.greedy_only)
    out = jnp.where(looked[:, None], out, jnp.pad(plain[:, None], ((0, 0), (0, w)), constant_values=PAD_ID))
    had = (s.cont >= 0) & ~s.done
    shadow = had & (plain == jnp.take_along_axis(s.history, jnp.maximum(s.cont, 0)[:, None], axis=1)[:, 0])
    zero = jnp.zeros_like(kept)
    s = _observe(s, had, jnp.where(looked, kept > 0, shadow),
                 jnp.where(looked, jnp.maximum(kept - 1, 0) + (kept < own) * (kept > 0), zero),
                 jnp.where(looked, jnp.maximum(kept - 1, 0), zero))
    s = s.replace(after_kept=jnp.where(looked, had & (kept >= own), shadow))
    s = _emit(s.replace(cache=keep(pending, kept + 1)), out, kept, _scores(logits, out), spec)
    s = _pace(s.replace(drafted=s.drafted + own), looked, kept, length, spec)
    return _look(s, spec)


def _verify_at(steps: Steps, keep: Keep, spec: LoopSpec, w: int):
    """The verification of every row's draft of at most ``w`` ids, as a loop body."""
    def verify(s: SpecState) -> SpecState:
        draft = jax.vmap(lambda h, c: jax.lax.dynamic_slice_in_dim(h, jnp.maximum(c, 0), w))(s.history, s.cont)
        return _verify(steps, keep, spec, draft, s)
    return verify


def _plain(step: Step, spec: LoopSpec, s: SpecState) -> SpecState:
    """One token per row through the model's one-token step, as plain sampling draws it; a row
    with a draft it did not verify checks the draft's first token against it (its shadow)."""
    logits, cache = step(_last(s)[:, 0], s.cache)
    logits = adjust_logits(logits.astype(jnp.float32), None, s.count, spec)
    nxt = sample_rows(logits, s.params, s.count, spec.top_k_max, spec.greedy_only)
    score = chosen_log_prob(logits, nxt)  # plain decoding's own float operations (fewer than _scores')
    had = (s.cont >= 0) & ~s.done
    s = _emit_one(s.replace(cache=cache), nxt, score, spec)
    # the shadow's id read after the write (it lies before it): the old history then has no
    # reader left once the new token is written, and XLA updates it in place (no copy a step)
    hit = had & (nxt == jnp.take_along_axis(s.history, jnp.maximum(s.cont, 0)[:, None], axis=1)[:, 0])
    zero = jnp.zeros_like(s.count)
    return _look(_observe(s, had, hit, zero, zero).replace(after_kept=hit), spec)


def _emit_one(s: SpecState, nxt, score, spec: LoopSpec) -> SpecState:
    """``_emit`` of one token a row (the plain path: no draft kept), with fewer operations."""
    limit = jnp.minimum(s.params.max_new_tokens, spec.max_new_tokens)
    write = ~s.done & (s.count < limit)
    nxt = jnp.where(write, nxt, PAD_ID)
    at = (jnp.arange(s.history.shape[1])[None, :] == (s.start + s.count)[:, None]) & write[:, None]
    count = s.count + write.astype(s.count.dtype)
    ended = write & (nxt == EOS_ID) if not spec.ignore_eos else jnp.zeros_like(write)
    return s.replace(history=jnp.where(at, nxt[:, None], s.history), count=count,
                     done=s.done | ended | (count >= limit), logprob=s.logprob + jnp.where(write, score, 0.0),
                     calls=s.calls + 1)


def _one_step(steps: Steps, keep: Keep) -> Step:
    """A one-token step from ``decode_steps`` / ``keep_steps`` (for callers without ``decode_step``)."""
    def step(last, cache):
        logits, pending = steps(last[:, None], cache)
        return logits[:, 0], keep(pending, jnp.ones_like(last))
    return step


def start(first_logits, cache, prompt, lengths, params: SamplingParams, spec: LoopSpec) -> SpecState:
    """The state after the first token, chosen from the prefill logits as plain sampling does.
    ``prompt`` (B, S) right-padded ids with ``lengths`` (B,): where drafts are looked up."""
    b, s_len = prompt.shape
    k = spec.draft_tokens
    history = jnp.zeros((b, s_len + spec.max_new_tokens + k + 1), jnp.int32)
    history = history.at[:, :s_len].set(jnp.where(jnp.arange(s_len)[None, :] < lengths[:, None],
                                                  prompt, PAD_ID))
    zeros = jnp.zeros((b,), jnp.int32)
    state = SpecState(history=history, start=lengths.astype(jnp.int32), cache=cache, count=zeros,
                      done=params.max_new_tokens <= 0, logprob=jnp.zeros((b,), jnp.float32), params=params,
                      calls=jnp.zeros((), jnp.int32), drafted=zeros, accepted=zeros,
                      draft_len=jnp.full((b,), min(DRAFT_START, k), jnp.int32),
                      counts=jnp.zeros((b, 4), jnp.float32), after_kept=jnp.zeros((b,), bool), cont=zeros - 1,
                      length=zeros)
    first = adjust_logits(first_logits.astype(jnp.float32), None, jnp.zeros((), jnp.int32), spec)
    nxt = sample_rows(first, params, jnp.zeros((), jnp.int32), spec.top_k_max, spec.greedy_only)
    scores = chosen_log_prob(first, nxt)
    return _look(_emit_one(state, nxt, scores, spec).replace(calls=jnp.zeros((), jnp.int32)), spec)


def run(steps: Steps, keep: Keep, state: SpecState, spec: LoopSpec, until=None,
        step: Optional[Step] = None) -> SpecState:
    """Continues until every row is done (or, with ``until``, has that many tokens). ``step``:
    the model's one-token step (``decode_step``), run by the iterations where no row verifies
    (by default made of ``steps`` and ``keep``).

    Plain steps run in an inner ``while_loop`` while no row has a draft worth verifying (each
    step looks up the next drafts: the condition only reads ``length``): a loop condition is a
    point where the host waits for the device anyway. Then one ``while_loop`` per compiled width
    verifies while the longest draft needs that width, usually once or not at all. Loops, not
    ``lax.cond`` / ``switch``: a loop updates its carry (the cache, the history) in place, where
    XLA copies a conditional's operands into its result, at every call."""
    step = step or _one_step(steps, keep)
    def packed(f):  # a loop body on the packed carry
        return lambda c: _pack(f(_unpack(c)))

    def reads(f):  # a loop condition on the packed carry
        return lambda c: f(_unpack(c))

    def live(s: SpecState):
        return jnp.any(~s.done if until is None else ~s.done & (s.count < until))

    def needs(low: int, high: int):
        return lambda s: live(s) & (low < (need := jnp.max(s.length))) & (need <= high)

    def body(c):
        c = jax.lax.while_loop(reads(lambda s: live(s) & ~jnp.any(s.length > 0)),
                               packed(functools.partial(_plain, step, spec)), c)
        ws = widths(spec.draft_tokens)
        for low, w in zip((0,) + ws[:-1], ws):
            c = jax.lax.while_loop(reads(needs(low, w)), packed(_verify_at(steps, keep, spec, w)), c)
        return c

    return _unpack(jax.lax.while_loop(reads(live), body, _pack(state)))


_PACKED = ("count", "done", "after_kept", "cont", "length")  # (B,) values every step rewrites


def _pack(s: SpecState):
    """The loops' carry: the (B,) values every step rewrites in ONE (B, 5) int32 array. XLA copies
    a loop-carried value whose old contents are read after its new ones exist; one array is one
    copy a step (or none), where five values were five (docs/PERFORMANCE.md)."""
    meta = jnp.stack([getattr(s, f).astype(jnp.int32) for f in _PACKED], axis=1)
    return s.replace(**{f: None for f in _PACKED}), meta


def _unpack(c) -> SpecState:
    s, meta = c
    return s.replace(count=meta[:, 0], done=meta[:, 1] > 0, after_kept=meta[:, 2] > 0, cont=meta[:, 3],
                     length=meta[:, 4])


def speculative_loop(steps: Steps, keep: Keep, first_logits, cache, prompt, lengths,
                     params: SamplingParams, spec: LoopSpec, step: Optional[Step] = None) -> dict:
    """Sampling (greedy rows at temperature 0) with prompt-lookup speculation, in one loop."""
    state = start(first_logits, cache, prompt, lengths, params, spec)
    return result(run(steps, keep, state, spec, step=step), spec)


def reply(state: SpecState, spec: LoopSpec) -> jax.Array:
    """(B, N) the ids generated so far (``history`` holds pad after each row's last)."""
    at = state.start[:, None] + jnp.arange(spec.max_new_tokens)[None, :]
    return jnp.take_along_axis(state.history, at, axis=1)


def result(state: SpecState, spec: LoopSpec) -> dict:
    """The generated ids (B, N), their lengths and scores, as ``loop.result`` gives them."""
    tokens = reply(state, spec)
    generated = jnp.minimum(jnp.maximum(state.params.max_new_tokens, 0), state.count)
    if spec.ignore_eos:
        tokens, lengths = tokens, generated.astype(jnp.int32)
    else:
        tokens, lengths = finish(tokens, generated)
    return {"tokens": tokens, "lengths": lengths, "scores": state.logprob}
