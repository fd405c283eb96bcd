"""Continuous batching on the device: a fixed set of decode slots that rows join and leave.

The state holds S slots: the model's cache in its slot layout (``Model.slot_prefill``),
each slot's last token, how many tokens it has generated, whether it is done (free
slots are done), its generated ids and its sampling settings. Three pure functions:

- ``prefill_rows``: prompts -> their first token (chosen from the prefill logits) and
  cache rows; a prefix cache hooks in here (it may replace ``model.slot_prefill`` by a
  prefill that continues from a cached prefix: same outputs, less work);
- ``insert_rows``: those rows into free slots (a row's slot is its only link to them);
- ``decode_chunk``: up to ``steps`` tokens for every live slot in one compiled loop that
  stops early when no slot is live or a row has just finished (its slot can take the next
  request at once), returning what the host reads in ONE array (its report). Given a queue
  of rows prefilled ahead, the loop itself inserts them into the slots that free, between two
  of its steps, so that a slot never idles until the chunk ends (as vLLM's scheduler refills
  a finished sequence's place at the next step) and no program runs between chunks for them;
  a speculative decoder would replace it by a chunk that drafts and verifies, keeping the
  same state.

The host dispatches a prefill and the next chunk before it waits for anything: the rows'
first tokens (``admit_first``) are read once the prefill is done, while the chunk runs
(each device-to-host read is a wait for the device and, in a server, for the interpreter
lock as well). A prefill may also run in another thread while a chunk runs
(``prefill_rows``: it reads only the variables), its rows inserted when slots free
(``insert_rows``). Sampling settings go in as host arrays (``RowSettings``) and become keys
inside the compiled prefill.

A row's token at index i is drawn with its own key folded with i (``sample_rows``), and
rows never mix in the model, so a row's tokens depend only on its prompt, settings and
seed: never on its slot, when it joined, or its neighbours. Shapes never depend on a
request: the prefill compiles once per (batch, prompt) bucket, the rest once.
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from nety_jax.config.sections import EOS_ID, PAD_ID
from nety_jax.decoding.keys import seed_keys
from nety_jax.decoding.sampling import NEG_INF, SamplingParams, ban_repeated_ngrams, sample_rows
from nety_jax.decoding.spec import LoopSpec


@struct.dataclass
class Slots:
    cache: Any  # the model's slot-layout cache, every leaf (S, ...)
    last: jax.Array  # (S,) int32: the last token (the next step's input)
    count: jax.Array  # (S,) int32: tokens generated so far
    done: jax.Array  # (S,) bool: finished or free
    tokens: jax.Array  # (S, R) int32: generated ids (R: the longest reply the model can give)
    params: SamplingParams  # (S,) each slot's settings and key


@struct.dataclass
class RowSettings:
    """Per-row sampling settings as host arrays (B,): ``SamplingParams.create`` with one seed
    per row, its keys made inside the compiled prefill instead of by eager operations."""
    temperature: jax.Array  # float32
    top_k: jax.Array  # int32
    top_p: jax.Array  # float32
    max_new_tokens: jax.Array  # int32
    seed: jax.Array  # (B, 2) uint32: the row's key (``keys.seed_keys``)

    @classmethod
    def create(cls, temperature, top_k, top_p, max_new_tokens, seed) -> "RowSettings":
        seed = seed_keys(np.asarray(seed, np.uint64))
        return cls(np.asarray(temperature, np.float32), np.asarray(top_k, np.int32), np.asarray(top_p, np.float32),
                   np.minimum(np.asarray(max_new_tokens, np.int64), np.iinfo(np.int32).max).astype(np.int32), seed)

    def params(self) -> SamplingParams:
        """The same keys as ``decoding.keys.row_keys`` gives for these seeds."""
        return SamplingParams(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                              max_new_tokens=self.max_new_tokens, key=self.seed)


@struct.dataclass
class Prefilled:
    cache: Any  # cache rows (B, ...) in the slot layout
    first: jax.Array  # (B,) int32: the first generated token
    done: jax.Array  # (B,) bool: already finished (max_new_tokens <= 1, or <eos>)
    params: SamplingParams


def _choose(logits, params: SamplingParams, history, count, spec: LoopSpec):
    """Each row's token at index ``count`` (B,) given its generated ``history`` (B, R)."""
    logits = logits.astype(jnp.float32)
    if spec.min_new_tokens > 0:
        early = (count < spec.min_new_tokens)[:, None] & (jnp.arange(logits.shape[-1]) == EOS_ID)
        logits = jnp.where(early, NEG_INF, logits)
    if spec.no_repeat_ngram > 0:
        ban = lambda row, toks, pos: ban_repeated_ngrams(row[None], toks[None], pos, spec.no_repeat_ngram)[0]
        logits = jax.vmap(ban)(logits, history, count)
    return sample_rows(logits, params, count, spec.top_k_max)


def _finished(nxt, count, params: SamplingParams, spec: LoopSpec):
    done = count >= params.max_new_tokens
    return done if spec.ignore_eos else done | (nxt == EOS_ID)


def empty(model, variables, slots: int, room: int, source_len: int) -> Slots:
    """S free slots: a zero cache of the slot layout (its shapes from an abstract prefill)."""
    shapes = jax.eval_shape(lambda v: model.slot_prefill(v, jnp.ones((slots, 1), jnp.int32),
                                                         jnp.ones((slots,), jnp.int32), source_len)[1], variables)
    cache = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    params = SamplingParams.create(slots, temperature=0.0, max_new_tokens=0, keys=jnp.zeros((slots, 2)))
    state = Slots(cache=cache, last=jnp.zeros((slots,), jnp.int32), count=jnp.zeros((slots,), jnp.int32),
                  done=jnp.ones((slots,), bool), tokens=jnp.full((slots, room), PAD_ID, jnp.int32),
                  params=jax.tree_util.tree_map(jnp.asarray, params))
    # committed to the variables' devices, as every later state (a compiled output) is: one
    # program per shape
    return jax.device_put(state, _home(variables))


def _home(variables):
    """Where a new slot state lives: replicated on the variables' mesh (tensor-parallel
    generation), else this process's first device."""
    sharding = getattr(jax.tree_util.tree_leaves(variables)[0], "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding):
        return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    return jax.local_devices()[0]


@functools.partial(jax.jit, static_argnames=("model", "spec", "source_len"))
def prefill_rows(variables, tokens, lengths, settings: RowSettings, *, model, spec: LoopSpec,
                 source_len: int) -> Prefilled:
    """Right-padded prompts (B, P) -> their cache rows and first tokens (the hook point of a
    prefix cache: see the module's docstring)."""
    return _prefilled(*model.slot_prefill(variables, tokens, lengths, source_len), settings.params(), spec)


@functools.partial(jax.jit, static_argnames=("model", "spec", "source_len"))
def prefill_rows_from(variables, states, tokens, lengths, settings: RowSettings, *, model, spec: LoopSpec,
                      source_len: int) -> Prefilled:
    """``prefill_rows`` from reused prompt states (``model.slot_prefill_from``; ``tokens``: what
    follows each row's state, or the whole prompts: ``serving/prefix_cache.py``)."""
    return _prefilled(*model.slot_prefill_from(variables, states, tokens, lengths, source_len), settings.params(),
                      spec)


def _prefilled(logits, cache, params: SamplingParams, spec: LoopSpec) -> Prefilled:
    count = jnp.zeros(logits.shape[:1], jnp.int32)
    history = jnp.full((logits.shape[0], 1), PAD_ID, jnp.int32)
    first = _choose(logits, params, history, count, spec)
    done = (params.max_new_tokens <= 0) | _finished(first, count + 1, params, spec)
    return Prefilled(cache=cache, first=first, done=done, params=params)


@functools.partial(jax.jit, static_argnames=("model",), donate_argnums=(0,))
def insert_rows(state: Slots, rows: Prefilled, slots, *, model) -> Slots:
    """Prefilled rows into ``slots`` (B,) (an index >= S drops a padding row)."""
    return _insert(state, rows, slots, model)


def _insert(state: Slots, rows: Prefilled, slots, model) -> Slots:
    put = lambda into, value: into.at[slots].set(value.astype(into.dtype), mode="drop")
    first_tokens = jnp.full((rows.first.shape[0], state.tokens.shape[1]), PAD_ID, jnp.int32)
    first_tokens = first_tokens.at[:, 0].set(rows.first)
    return Slots(cache=model.slot_insert(state.cache, rows.cache, slots), last=put(state.last, rows.first),
                 count=put(state.count, jnp.ones_like(rows.first)), done=put(state.done, rows.done),
                 tokens=put(state.tokens, first_tokens),
                 params=jax.tree_util.tree_map(put, state.params, rows.params))


@functools.partial(jax.jit, static_argnames=("model", "spec", "source_len"), donate_argnums=(1,))
def admit(variables, state: Slots, tokens, lengths, settings: RowSettings, slots, *, model, spec: LoopSpec,
          source_len: int) -> Slots:
    """``prefill_rows`` and ``insert_rows`` in one program (one launch per admission, where no
    prefix cache needs the prefilled rows on their own)."""
    rows = _prefilled(*model.slot_prefill(variables, tokens, lengths, source_len), settings.params(), spec)
    return _insert(state, rows, slots, model)


@functools.partial(jax.jit, static_argnames=("model", "spec", "source_len"), donate_argnums=(1,))
def admit_first(variables, state: Slots, tokens, lengths, settings: RowSettings, slots, *, model,
                spec: LoopSpec, source_len: int):
    """``admit``, also returning the rows' first tokens (B,): the host reads them as soon as
    the prefill is done (a stream's first text), not with the next chunk's report."""
    rows = _prefilled(*model.slot_prefill(variables, tokens, lengths, source_len), settings.params(), spec)
    return _insert(state, rows, slots, model), rows.first


@functools.partial(jax.jit, static_argnames=("model", "spec", "width", "memory"), donate_argnums=(1,))
def decode_chunk(variables, state: Slots, stop, start, steps, finish=1, queue: Optional[Prefilled] = None,
                 queue_from=0, queue_to=0, *, model, spec: LoopSpec, width: int, memory: int = 0):
    """Up to ``steps`` (a runtime count < ``width``) tokens for every live slot; ``stop`` (S,)
    ends rows first (a stop string or a cancelled request, seen by the host). The loop also
    ends once ``finish`` (a runtime count >= 1) rows have finished in it that no queued row
    can take the place of: their slots can then take waiting requests, several in one prefill
    when ``finish`` > 1 (a finished row's slot idles until then).

    ``queue``: rows prefilled ahead (Q rows, of which ``queue_from`` to ``queue_to`` wait): each
    takes the first slot that is free before a step, inside the loop (a slot freed by a row that
    finished at step i decodes a queued row from step i + 1 on), instead of after the chunk, in
    a program of its own. ``start`` (S,): each slot's first index to report.

    Returns the state and its report, an (S + Q, 4 + ``width``) int32 array the host reads in
    one wait: a row per slot for its row at the end (count, done, origin: -1 the row it had at
    the start, else its queue index; the slot; ``width`` tokens from ``start``, or from 1 for a
    queued row: its first token came from its prefill), then a row per queued row j for the
    row whose slot j took (all -1 where j was not placed), in the same form.

    ``memory`` > 0: the steps read only the first ``memory`` positions of the slots' memory
    (``model.slot_memory`` of the widest prompt among the live slots and the queue; the
    positions past a row's own are masked, so its tokens are the same): the slot layout pads
    every memory to the longest source the model takes, and the cross-attention and copy head
    read all of it."""
    state = state.replace(done=state.done | stop)
    entered = state.done
    begin, origin = start.astype(jnp.int32), jnp.full(start.shape, -1, jnp.int32)
    if memory:
        narrow_queue = None if queue is None else queue.replace(cache=model.slot_narrow(queue.cache, memory))
        narrow, begin, origin, retired = _steps(variables, state.replace(cache=model.slot_narrow(state.cache, memory)),
                                                entered, steps, finish, model, spec, begin, origin, width,
                                                narrow_queue, queue_from, queue_to)
        full = state.cache
        if queue is not None:  # the queued rows' memory, which the narrow cache does not hold
            full = model.slot_insert(full, queue.cache, _slot_of_queued(origin, queue.first.shape[0]))
        state = narrow.replace(cache=model.slot_widen(full, narrow.cache))
    else:
        state, begin, origin, retired = _steps(variables, state, entered, steps, finish, model, spec, begin, origin,
                                               width, queue, queue_from, queue_to)
    report = _report(state, begin, origin, width)
    return state, report if retired is None else jnp.concatenate([report, retired])


def _slot_of_queued(origin, q: int):
    """(Q,): the slot each queued row holds at the end (S: none)."""
    slots = origin.shape[0]
    return jnp.full((q,), slots, jnp.int32).at[jnp.where(origin >= 0, origin, q)].set(
        jnp.arange(slots, dtype=jnp.int32), mode="drop")


def _steps(variables, state: Slots, entered, steps, finish, model, spec: LoopSpec, begin, origin, width: int,
           queue: Optional[Prefilled] = None, queue_from=0, queue_to=0):
    """The chunk's loop: one token a live slot per step, until ``steps``, no slot live (nor
    queued), or ``finish`` rows not ``entered`` done finishing that no queued row will replace.
    Returns the state, each slot's ``begin`` and ``origin`` and the queue's report rows
    (``decode_chunk``; None without a queue)."""
    rows = jnp.arange(state.last.shape[0])

    def step(s: Slots) -> Slots:
        live = ~s.done
        logits, cache = model.slot_step(variables, s.last, s.cache, live)
        # a row that is not live samples as a greedy one: its token is dropped, and it must not
        # send the live rows through the full-vocabulary path of sampling
        params = s.params.replace(temperature=jnp.where(live, s.params.temperature, 0.0))
        nxt = jnp.where(live, _choose(logits, params, s.tokens, s.count, spec), PAD_ID)
        tokens = s.tokens.at[rows, jnp.where(live, s.count, s.tokens.shape[1])].set(nxt, mode="drop")
        count = s.count + live
        done = s.done | (live & _finished(nxt, count, s.params, spec))
        return s.replace(cache=cache, last=jnp.where(live, nxt, s.last), count=count, done=done, tokens=tokens)

    if queue is None:
        def body(carry):
            i, s = carry
            return i + 1, step(s)

        def cond(carry):
            i, s = carry
            return (i < steps) & ~jnp.all(s.done) & (jnp.sum(s.done & ~entered) < finish)

        return jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), state))[1], begin, origin, None

    q = queue.first.shape[0]

    def refill(c):
        """Queued rows into the slots free now, in order."""
        s, entered, next_q, begin, origin, retired = c
        rank = jnp.cumsum(s.done) - 1
        take = s.done & (next_q + rank < queue_to)
        index = jnp.where(take, next_q + rank, q)  # each slot's queued row (q: none)
        target = jnp.full((q,), rows.shape[0], jnp.int32).at[index].set(rows.astype(jnp.int32), mode="drop")
        retired = retired.at[index].set(_report(s, begin, origin, width), mode="drop")
        return (_insert(s, queue, target, model), entered & ~take, next_q + jnp.sum(take),
                jnp.where(take, 1, begin), jnp.where(take, index, origin), retired)

    def segment(carry):
        """Queued rows into the free slots, then plain steps until a row finishes (as many
        steps as the loop without a queue: the refill costs nothing at the other steps)."""
        i, c = carry
        s, entered, next_q, begin, origin, retired = jax.lax.cond((c[2] < queue_to) & jnp.any(c[0].done), refill,
                                                                  lambda c: c, c)
        running = ~s.done

        def plain(inner):
            i, s = inner
            return (i < steps) & ~jnp.all(s.done) & ~jnp.any(s.done & running)
        i, s = jax.lax.while_loop(plain, lambda inner: (inner[0] + 1, step(inner[1])), (i, s))
        return i, (s, entered, next_q, begin, origin, retired)

    def cond(carry):
        i, (s, entered, next_q, _, _, _) = carry
        waiting = queue_to - next_q  # queued rows that will take finished rows' slots
        return (i < steps) & (~jnp.all(s.done) | (waiting > 0)) & (jnp.sum(s.done & ~entered) - waiting < finish)

    retired = jnp.full((q, 4 + width), -1, jnp.int32)
    carry = (state, entered, jnp.asarray(queue_from, jnp.int32), begin, origin, retired)
    _, (state, _, _, begin, origin, retired) = jax.lax.while_loop(cond, segment, (jnp.zeros((), jnp.int32), carry))
    return state, begin, origin, retired


def _report(state: Slots, begin, origin, width: int):
    """(S, 4 + width) int32: each slot's count, done flag, origin, index, and ``width`` tokens
    from index ``begin`` (S,) on (the host keeps the ``count - begin`` that are new)."""
    index = jnp.minimum(begin[:, None] + jnp.arange(width)[None, :], state.tokens.shape[1] - 1)
    window = jnp.take_along_axis(state.tokens, index, axis=1)
    slots = jnp.arange(state.count.shape[0], dtype=jnp.int32)
    return jnp.concatenate([jnp.stack([state.count, state.done.astype(jnp.int32), origin, slots], axis=1), window],
                           axis=1)
