"""Continuous batching: requests join and leave a running decode batch between chunks.

A fixed number of slots (``--slots``) hold rows being decoded (``decoding/slots.py``
keeps their caches on the device). The worker thread loops:

1. admit: take waiting requests while their rows fit the free slots (first come, first
   served: a request that does not fit waits at the head); cancelled ones are dropped;
2. prefill: the admitted rows in batches of one prompt bucket and at most ``ADMIT_ROWS``
   rows (the size rounded up to a power of two, the prompt length to
   ``data.bucket_multiple``: every program is compiled at start-up by ``warm_up``), each row
   written into a free slot (``SlotRunner.prefill_apart``, the one place a prefix cache hooks
   in, then ``SlotRunner.insert``);
3. decode: one compiled chunk of ``--chunk`` tokens over every slot is started; while the
   device runs it, the host reads the admitted rows' first tokens (a stream's first text) and
   the text of the chunk before (streamed rows get their text, stop strings end rows, rows of
   a cancelled request, a client that went away, stop, finished requests are delivered); then
   it waits for the chunk: a row that ended there frees its slot at once (its text is read
   while the next chunk runs). While every slot is taken and requests wait, a chunk ends once
   ``admit_batch`` rows have finished (at most as many as wait), not at the first, and the
   waiting requests are prefilled together (one program's fixed cost instead of one each,
   and fewer chunks). That prefill runs AHEAD, in a thread of its own while a chunk runs (as
   JetStream separates prefill from generation), up to ``ahead_rows`` rows of one prompt
   width at a time, two batches in flight (``_start_ahead``): the next chunk takes the
   prefilled rows as its QUEUE and puts each into the first slot that frees, inside its loop
   (``decoding/slots.py``), so a finished row's slot decodes a waiting row from the next step
   on and the engine's thread runs no program for it; only the finished rows no queued row
   replaces end the chunk early. Rows the chunk cannot take as a queue (a prefix cache's
   rows of several programs) go into freed slots between chunks (``_place_ahead``).

A request's rows finish independently; its reply is delivered when the last one ends.
``max_tokens`` is bounded by the model's room after the prompt (its context less the
prompt), or ``--max-tokens`` when given. Replies never depend on the batch: see
``decoding/slots.py``.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import queue
from typing import Optional

import numpy as np

from nety_jax.config.sections import EOS_ID, PAD_ID
from nety_jax.data.prompts import batch_bucket, bucket
from nety_jax.serving.engine import Job, Row, Worker, _RowState, padded_prompts, padded_settings

LONG_CHUNK = 4  # a chunk's length while every slot is taken, in --chunk units
# the most rows one prefill program takes (more are prefilled in several): bounds the batch
# buckets, so the programs compiled at start-up (``warm_up``), whatever --slots
ADMIT_ROWS = 8
# while every slot is taken and requests wait, a chunk runs on until this many rows have finished
# (at most as many as wait), so that their slots are refilled by one prefill instead of one each:
# the default of ``--admit-batch``
ADMIT_BATCH = 2
# requests prefilled ahead at a time: one a chunk takes as its queue, the next one prefilling
AHEADS = 2


class SlotRunner:
    """The device side of a ``PretrainedBackend``'s slots: prefill + insert, and chunks."""

    def __init__(self, backend, slots: int, ahead_rows: int = 0):
        from nety_jax.decoding import slots as device
        self.device, self.slots = device, slots
        # a chunk's queue of rows prefilled ahead: one program's rows, padded to this batch
        self.queue_size = batch_bucket(ahead_rows) if ahead_rows else 0
        self.variables, self.model, self.spec = backend.model.variables, backend.model.model, backend.spec
        self.data_cfg, self.prompts = backend.data_cfg, backend.prompts
        self.room = self.prompts.max_new_tokens()
        self.source_len = self.prompts.limit(self.data_cfg, 1)  # the longest prompt the model takes
        self.prefix_cache = getattr(backend.model, "prefix_cache", None)
        self.static = {"model": self.model, "spec": self.spec, "source_len": self.source_len}  # prefill's
        self.reset()

    def reset(self) -> None:
        self.state = self.device.empty(self.model, self.variables, self.slots, self.room, self.source_len)
        # each slot's prompt width at its last prefill (a freed slot keeps it until reused): their
        # maximum bounds the memory every live slot reads (``model.slot_memory``)
        self.widths = np.zeros(self.slots, np.int64)

    def prefill(self, rows: list[Row], slot_ids: list[int]) -> list:
        """Prefills ``rows`` into ``slot_ids`` without waiting for the device: one program per
        group (``_groups``) that prefills and inserts (through the prefix cache, if any:
        ``prefill_apart``'s programs, then ``insert``). Returns their first tokens as ``(device
        array (B,), row indices)`` per program (``firsts`` reads them)."""
        firsts = []
        for width, part in self._groups(rows):
            firsts.append((self._admit([rows[k] for k in part], [slot_ids[k] for k in part], width), part))
        return firsts

    def _groups(self, rows: list[Row]):
        """(prompt width, row indices) per prefill program: one per prompt bucket (the width a
        prompt is prefilled at depends on its own length only), at most ``ADMIT_ROWS`` rows."""
        groups: dict[int, list[int]] = {}
        for k, r in enumerate(rows):
            groups.setdefault(self.prompt_width(len(r.ids)), []).append(k)
        for width, members in groups.items():
            for first in range(0, len(members), ADMIT_ROWS):
                yield width, members[first: first + ADMIT_ROWS]

    def _admit(self, rows: list[Row], slot_ids: list[int], p: int, through_cache: bool = True):
        """One program's rows into their slots; returns their first tokens (device, (B,))."""
        if self.prefix_cache is not None:
            out = self._prefill_part(rows, p, through_cache)
            self.insert([(out, list(range(len(rows))), p)], dict(enumerate(slot_ids)))
            return out.first
        tokens, lengths, settings = self._inputs(rows, p)
        where = np.full((tokens.shape[0],), self.slots, np.int32)  # padding rows land nowhere
        where[: len(rows)] = slot_ids
        self.widths[slot_ids] = p
        self.state, first = self.device.admit_first(self.variables, self.state, tokens, lengths, settings, where,
                                                    **self.static)
        return first

    def prefill_apart(self, rows: list[Row], batch: int = 0) -> list:
        """The prefill programs of ``rows``, one per prompt bucket and at most ``ADMIT_ROWS``
        rows (the width a prompt is prefilled at depends on its own length only), the slots
        left untouched: ``[(device.Prefilled, row indices, prompt width)]`` for ``insert``. It
        reads only the variables (and the prefix cache, which has its own lock), so it may run in
        another thread while a chunk runs.

        Hook point (prefix cache): rows' prompt ids are ``r.ids``; what this must return is
        what ``device.prefill_rows`` returns for them."""
        return [(self._prefill_part([rows[k] for k in part], width, batch=batch), part, width)
                for width, part in self._groups(rows)]

    def insert(self, pending: list, slot_of: dict) -> None:
        """``prefill_apart``'s rows into slots: ``slot_of`` maps a row index to its slot (rows
        not in it are left out: they may go in later, from the same ``pending``)."""
        for rows, part, width in pending:
            placed = [(i, slot_of[k]) for i, k in enumerate(part) if k in slot_of]
            if not placed:
                continue
            where = np.full((rows.first.shape[0],), self.slots, np.int32)  # padding rows land nowhere
            for i, slot in placed:
                where[i] = slot
                self.widths[slot] = width
            self.state = self.device.insert_rows(self.state, rows, where, model=self.model)

    @staticmethod
    def first_tokens(pending: list) -> list:
        """``prefill_apart``'s first tokens in the form ``firsts`` reads."""
        return [(rows.first, part) for rows, part, _ in pending]

    @staticmethod
    def firsts(pending: list, n: int) -> np.ndarray:
        """The first tokens of ``prefill``'s ``n`` rows (a wait for those prefills only)."""
        out = np.zeros(n, np.int64)
        for tokens, part in pending:
            out[part] = np.asarray(tokens)[: len(part)]
        return out

    def prompt_width(self, length: int) -> int:
        """The width a prompt of ``length`` tokens is prefilled at."""
        p = min(bucket(length, self.data_cfg.bucket_multiple), self.source_len)
        return self.model.slot_prompt_length(p, self.source_len)

    def warm_up(self, width: int, lengths=None, ahead_rows: int = 0) -> int:
        """Runs every program an admission can meet once, on throwaway slots, so that a live
        server never compiles under load (as JetStream warms its prefill buckets): the
        prefill + insert of each prompt width x batch bucket, the prefill apart and the insert
        of those of up to ``ahead_rows`` rows (``ContinuousEngine._start_ahead``), and the decode
        chunk of ``width`` tokens (``ContinuousEngine.width``), without and with a queue of
        rows prefilled ahead. ``lengths``:
        the prompt lengths to cover (default: every length the model takes). A prefix cache
        is bypassed (its programs for a miss are warmed; a hit's, from a kept prefix of some
        width, compile on first use). Returns how many admissions it ran."""
        width_of = {self.prompt_width(n): n for n in (lengths or range(1, self.source_len + 1))}
        runs = 0
        stop, start = np.zeros(self.slots, bool), np.zeros(self.slots, np.int32)
        for prompt_width, n in sorted(width_of.items()):
            b = 1
            while b <= batch_bucket(min(self.slots, ADMIT_ROWS)):
                rows = [Row([EOS_ID + 2] * n, 0.0, 0, 1.0, 2, i) for i in range(min(b, self.slots))]
                self._admit(rows, list(range(len(rows))), prompt_width, through_cache=False)
                if self.prefix_cache is None and b <= batch_bucket(min(ahead_rows, self.slots, ADMIT_ROWS)):
                    out = self._prefill_part(rows, prompt_width)
                    self.insert([(out, list(range(len(rows))), prompt_width)], {k: k for k in range(len(rows))})
                runs, b = runs + 1, 2 * b
            self.report(self.step(stop, start, 1, width))  # the chunk reading this width's memory
            if self.queue_size:  # and the chunk taking a queue of rows of this width
                rows = [Row([EOS_ID + 2] * n, 0.0, 0, 1.0, 2, i) for i in range(min(ahead_rows, self.slots))]
                queued = self._prefill_part(rows, prompt_width, through_cache=False, batch=self.queue_size)
                self.report(self.step(stop, start, 1, width, queue=(queued, 0, 0, prompt_width)))
        self.reset()
        return runs

    def _prefill_part(self, rows: list[Row], p: int, through_cache: bool = True, batch: int = 0):
        """One prefill program's rows at prompt width ``p`` -> ``device.Prefilled`` (its batch
        rounded up to a power of two, at least ``batch``: the rows past ``len(rows)`` are
        padding)."""
        tokens, lengths, settings = self._inputs(rows, p, batch)
        if self.prefix_cache is not None and through_cache:
            return self._prefill(tokens, lengths, len(rows), settings)
        return self.device.prefill_rows(self.variables, tokens, lengths, settings, **self.static)

    def _inputs(self, rows: list[Row], p: int, batch: int = 0):
        """A prefill program's (tokens, lengths, settings): ``rows`` at width ``p``, the batch
        rounded up to a power of two (at least ``batch``) with padding rows."""
        b = max(batch_bucket(len(rows)), batch)
        tokens, lengths = padded_prompts(rows, b, p)
        return tokens, lengths, self.device.RowSettings.create(**padded_settings(rows, b))

    def _prefill(self, tokens: np.ndarray, lengths: np.ndarray, n: int, settings):
        """``device.prefill_rows``, through the prefix cache when the model has one."""
        from nety_jax.serving.prefix_cache import through_cache
        run = lambda t, m: self.device.prefill_rows(self.variables, t, m, settings, **self.static)
        run_from = lambda states, t, m: self.device.prefill_rows_from(self.variables, states, t, m, settings,
                                                                      **self.static)
        return through_cache(self.prefix_cache, self.model, tokens, lengths, n, run, run_from,
                             self.data_cfg.bucket_multiple, width=self.source_len)

    def step(self, stop: np.ndarray, start: np.ndarray, steps: int, width: int, finish: int = 1, queue=None):
        """Starts one chunk of at most ``steps`` < ``width`` tokens (it ends early once ``finish``
        rows have finished that no queued row replaces) without waiting for it; ``report`` reads
        what it returns. ``queue``: ``(device.Prefilled, first, end, prompt width)``, rows
        ``first`` to ``end`` of a ``prefill_apart`` group, inserted as slots free inside the
        chunk (``device.decode_chunk``)."""
        widest = int(self.widths.max()) if queue is None else max(int(self.widths.max()), queue[3])
        memory = self.model.slot_memory(widest, self.source_len)
        rows, first, end = (None, 0, 0) if queue is None else queue[:3]
        self.state, out = self.device.decode_chunk(self.variables, self.state, stop, np.asarray(start, np.int32),
                                                   np.int32(steps), np.int32(finish), rows, np.int32(first),
                                                   np.int32(end), model=self.model, spec=self.spec, width=width,
                                                   memory=memory)
        return out

    @staticmethod
    def report(out) -> np.ndarray:
        """A chunk's report (``device.decode_chunk``): (S + Q, 4 + width), the chunk's one wait
        for the device."""
        return np.asarray(out)

    def queue_rows(self, pending: list) -> Optional[int]:
        """The prompt width of ``prefill_apart``'s rows if a chunk can take them as its queue
        (one program's rows, its batch the queue's size the chunk compiles for), else None."""
        if len(pending) != 1 or pending[0][0].first.shape[0] != self.queue_size or not self.queue_size:
            return None
        return pending[0][2]


def _programs_overlap() -> bool:
    """Whether a program runs while the host goes on after dispatching it: not on JAX's CPU
    backend with async dispatch off (``runtime.keep_host_memory``, set by every ``nety-jax``
    command), where it runs in the calling thread; the engine then hands out text before it
    starts a chunk, not after (nothing runs meanwhile either way, and the text goes out a
    chunk sooner)."""
    import jax
    return jax.default_backend() != "cpu" or bool(jax.config.values.get("jax_cpu_enable_async_dispatch", True))


@dataclasses.dataclass(eq=False)  # compared by identity
class _Request:
    job: Job
    state: _RowState

    @property
    def left(self) -> int:
        """Rows still running (not yet ended by a read)."""
        return self.state.finish.count(None)


@dataclasses.dataclass(eq=False)
class _Ahead:
    """Waiting requests prefilled in the background while a chunk runs (every slot was taken):
    their rows go into slots as slots free, in order: inside a chunk, as its queue, where they
    are one program's rows (``SlotRunner.queue_rows``), else between chunks."""
    seats: list  # one per row, in order
    future: concurrent.futures.Future  # -> ``SlotRunner.prefill_apart`` of their rows
    placed: int = 0  # rows already in slots (the first ``placed``)
    pending: Optional[list] = None  # the prefill's result, once read (the first tokens in place)
    queue_width: Optional[int] = None  # their prompt width where a chunk can take them as its queue

    @property
    def left(self) -> int:
        return len(self.seats) - self.placed


@dataclasses.dataclass(eq=False)
class _Seat:
    request: _Request
    index: int  # the row's index in its request
    ids: list  # generated ids so far


class ContinuousEngine(Worker):
    def __init__(self, backend, slots: int = 32, chunk: int = 8, queue_size: int = 64, metrics=None,
                 stream_interval_ms: float = 0.0, admit_batch: Optional[int] = None):
        # rows a chunk waits for while every slot is taken (``--admit-batch``; never more than run)
        self.admit_batch = min(ADMIT_BATCH, slots) if admit_batch is None else admit_batch
        # rows prefilled ahead at a time: about as many as finish in a long chunk
        self.ahead_rows = min(slots, ADMIT_ROWS, max(self.admit_batch, slots // 2))
        self.runner, self.max_batch, self.chunk = SlotRunner(backend, slots, self.ahead_rows), slots, chunk
        self.width = chunk * LONG_CHUNK + 1  # the most tokens one chunk can bring a row (its first too)
        given = backend.max_tokens_asked
        self.max_tokens = given or self.runner.room
        self.max_tokens_why = (f"this server's maximum of {given} (nety-jax serve --max-tokens)" if given else
                               f"this model can produce (model.max_len={self.runner.prompts.model_cfg.max_len} "
                               f"leaves room for at most {self.runner.room} new tokens)")
        self.longest_prompt = self.runner.source_len
        self.seats: list[Optional[_Seat]] = [None] * slots

        self.stop = np.zeros(slots, bool)  # rows the host ended since the last chunk
        self.reads: list[tuple[_Seat, bool]] = []  # rows whose text the host reads next (and done)
        self.overlap = _programs_overlap()
        self._aheads: list[_Ahead] = []  # in arrival order; at most AHEADS
        # prefills of waiting requests run here while the engine's thread runs a chunk
        self._prefiller = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nety-prefill")
        super().__init__(backend, queue_size, metrics, stream_interval_ms)

    def warm_up(self, lengths=None) -> int:
        """``SlotRunner.warm_up`` (before the server takes requests)."""
        return self.runner.warm_up(self.width, lengths, self.ahead_rows)

    def reply_room(self, prompt_len: int) -> int:
        """The most new tokens a row may ask for after a prompt of ``prompt_len`` (0: the prompt
        is too long): the room it leaves in the model's context (the prompts' ``reply_room``),
        at most ``max_tokens``."""
        if prompt_len > self.longest_prompt:
            return 0
        return min(self.max_tokens, self.runner.prompts.reply_room(prompt_len))

    # -- the worker -----------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stop.is_set():
            admitted, seated = [], []
            try:
                self._place_ahead()
                if not self._aheads:  # first come, first served: none is waiting ahead
                    admitted = self._take(block=not any(self.seats) and not self.reads)
                if admitted:
                    seated = self._prefill(admitted)
                self._start_ahead()
                if not self.overlap:  # the chunk would run in this thread: the text goes out first
                    self._hand_out(seated)
                queue = self._queue()
                chunk = self._dispatch(queue) if any(self.seats) or queue is not None else None
                if self.overlap:  # while the device runs the chunk
                    self._hand_out(seated)
                if chunk is not None:
                    self._collect(*chunk)
            except Exception as e:  # never let one chunk take the server down
                self._fail(admitted, e)
            if self.metrics:
                self.metrics.queue_depth.set(self.jobs.qsize())
        self._prefiller.shutdown(wait=False)

    def _hand_out(self, seated) -> None:
        """The admitted rows' first tokens, then the text of the rows read next (the last
        chunk's and those first tokens), the clients' thread woken once, when all is read."""
        if seated:
            self._first(*seated)
        with self._burst():
            self._read()

    def _next(self, block: bool) -> Optional[Job]:
        try:
            return self.jobs.get(timeout=0.1) if block else self.jobs.get_nowait()
        except queue.Empty:
            return None

    def _take(self, block: bool, rows: Optional[int] = None, one_width: bool = False) -> list[Job]:
        """Waiting requests whose rows fit the free slots (or ``rows``), in arrival order;
        ``one_width``: only while their prompts are prefilled at the first one's width (one
        program's rows: a chunk's queue)."""
        free, taken, widths = self.seats.count(None) if rows is None else rows, [], set()
        while True:
            job, self._carry = self._carry or self._next(block and not taken), None
            if job is None:
                return taken
            if job.cancelled.is_set():
                self.forget(job)
                continue
            if one_width:
                widths |= {self.runner.prompt_width(len(r.ids)) for r in job.rows}
            if len(job.rows) > free or (taken and len(widths) > 1):
                self._carry = job
                return taken
            taken.append(job)
            free -= len(job.rows)

    def _prefill(self, jobs: list[Job]):
        """Seats the rows of ``jobs`` in free slots; returns (their seats, their first tokens as
        ``SlotRunner.prefill`` returns them)."""
        free = [s for s, seat in enumerate(self.seats) if seat is None]
        seats = self._seats_for(jobs)
        slot_ids = free[: len(seats)]
        pending = self.runner.prefill([s.request.job.rows[s.index] for s in seats], slot_ids)
        for slot, seat in zip(slot_ids, seats):
            self.seats[slot], self.stop[slot] = seat, False
        return seats, pending

    def _seats_for(self, jobs: list[Job]) -> list[_Seat]:
        """One seat per row of ``jobs``, in order (a request's rows share its state)."""
        if self.metrics:
            self.metrics.batch_size.observe(sum(len(j.rows) for j in jobs))
        seats = []
        for job in jobs:
            request = _Request(job, _RowState(self.backend.tokenizer, [(job, i, r) for i, r in enumerate(job.rows)],
                                              self.stream_interval))
            seats += [_Seat(request, i, [PAD_ID]) for i in range(len(job.rows))]  # [PAD_ID]: the first token, to come
        return seats

    def _start_ahead(self) -> None:
        """While every slot is taken (or rows prefilled ahead wait already: first come, first
        served): the next waiting requests (up to ``ahead_rows`` rows of one prompt width) are
        prefilled in the prefill thread while this thread runs the chunk; the next chunk takes
        them as its queue (or ``_place_ahead`` puts them into the slots that free). An
        admission then costs the engine's thread nothing, not a prefill. Two at a time: one
        being placed, the next one prefilling."""
        if len(self._aheads) >= AHEADS or (None in self.seats and not self._aheads):
            return
        if not self.jobs.qsize() and self._carry is None:
            return
        taken = self._take(False, self.ahead_rows, one_width=True)
        if taken:
            seats = self._seats_for(taken)
            rows_of = [s.request.job.rows[s.index] for s in seats]
            future = self._prefiller.submit(self.runner.prefill_apart, rows_of, self.runner.queue_size)
            self._aheads.append(_Ahead(seats, future))

    def _ready(self, ahead: _Ahead) -> None:
        """Waits for ``ahead``'s prefill (normally done by now, and never longer than running it
        here) and puts its rows' first tokens in place."""
        if ahead.pending is not None:
            return
        pending = ahead.future.result()
        firsts = self.runner.firsts(self.runner.first_tokens(pending), len(ahead.seats))
        for seat, token in zip(ahead.seats, firsts.tolist()):
            seat.ids[0] = token
        ahead.pending, ahead.queue_width = pending, self.runner.queue_rows(pending)

    def _queue(self) -> Optional[_Ahead]:
        """The rows the next chunk takes as its queue: the first ones prefilled ahead, if their
        prefill is done (or slots are free: it is waited for) and a chunk can take them."""
        if not self._aheads:
            return None
        head = self._aheads[0]
        if head.pending is None and not head.future.done() and None not in self.seats:
            return None
        self._ready(head)
        return head if head.queue_width is not None else None

    def _place_ahead(self) -> None:
        """Rows prefilled ahead that no chunk can take as its queue into free slots, in order,
        between chunks; their first tokens in place, a stream's read next."""
        while self._aheads and None in self.seats:
            ahead = self._aheads[0]
            self._ready(ahead)
            if ahead.queue_width is not None:
                return  # the next chunk takes them as its queue
            free = [s for s, seat in enumerate(self.seats) if seat is None]
            slot_of = {}
            for k, slot in zip(range(ahead.placed, len(ahead.seats)), free):
                slot_of[k] = slot
                self.seats[slot], self.stop[slot] = ahead.seats[k], False
            self.runner.insert(ahead.pending, slot_of)
            for k in slot_of:
                if ahead.seats[k].request.job.stream:
                    self.reads.append((ahead.seats[k], False))
            ahead.placed += len(slot_of)
            if not ahead.left:
                self._aheads.pop(0)

    def _first(self, seats: list, pending: list) -> None:
        """Puts the admitted rows' first tokens in place (the chunk already running reads from
        the second on); a stream's goes out at once."""
        for seat, token in zip(seats, self.runner.firsts(pending, len(seats)).tolist()):
            seat.ids[0] = token
            if seat.request.job.stream:
                self.reads.append((seat, False))

    def _dispatch(self, queue: Optional[_Ahead]):
        """Starts one chunk on the device (its report is read by ``_collect``), with ``queue``'s
        rows taking slots as they free: ``chunk`` tokens while a slot is free (a request
        arriving meanwhile waits at most that long), up to ``LONG_CHUNK`` times more while every
        slot is taken (fewer waits for the device). The chunk ends when a row finishes and frees
        its slot, or, while every slot is taken and requests wait, when ``admit_batch`` rows have
        finished that the queue cannot replace (at most as many as wait beyond it): the next
        admission then prefills them together."""
        start = np.array([len(seat.ids) if seat else 0 for seat in self.seats], np.int32)
        stop, self.stop = self.stop, np.zeros_like(self.stop)
        full = self.seats.count(None) <= (queue.left if queue else 0)
        steps = self.chunk * LONG_CHUNK if full else self.chunk
        later = self._aheads[1:] if queue is not None else self._aheads
        waiting = sum(a.left for a in later) + self.jobs.qsize() + (self._carry is not None)
        finish = max(1, min(self.admit_batch, waiting)) if full else 1
        rows = None if queue is None else (queue.pending[0][0], queue.placed, len(queue.seats), queue.queue_width)
        return self.runner.step(stop, start, steps, self.width, finish, rows), queue

    def _collect(self, out, queue: Optional[_Ahead]) -> None:
        """Waits for a chunk; keeps each row's new ids and frees the slots of rows that ended
        at once (the next chunk can take requests there); the queued rows it placed take their
        slots. The text is read later (``_read``), while the device runs the next chunk: only
        rows that have ended, have text to check (stop strings, cancelled) or a stream due a
        piece (``--stream-interval-ms``) are read."""
        report = self.runner.report(out)
        slots, before = len(self.seats), list(self.seats)
        occupant = lambda slot, origin: before[slot] if origin < 0 else queue.seats[origin]
        for j, (count, _, origin, slot) in enumerate(report[slots:, :4].tolist()):
            if count < 0:
                continue  # queued row j was not placed
            queue.placed = j + 1
            # a stop the host set meanwhile was for the row that left (a read while the chunk ran)
            self.runner.widths[slot], self.stop[slot] = queue.queue_width, False
            seat = occupant(slot, origin)  # the row whose slot j took: it finished
            if seat is not None:
                seat.ids += report[slots + j, 4: 4 + count - len(seat.ids)].tolist()
                self.reads.append((seat, True))
        if queue is not None and not queue.left:
            self._aheads.remove(queue)
        for slot, (count, done, origin, _) in enumerate(report[:slots, :4].tolist()):
            seat = self.seats[slot] = occupant(slot, origin)
            if seat is None:
                continue
            seat.ids += report[slot, 4: 4 + count - len(seat.ids)].tolist()
            job = seat.request.job
            if done:
                self.seats[slot] = None
                self.reads.append((seat, True))
            elif (job.stream and seat.request.state.due(seat.index)) or job.rows[seat.index].stop \
                    or job.cancelled.is_set():
                self.reads.append((seat, False))

    def _read(self) -> None:
        reads, self.reads = self.reads, []
        for seat, done in reads:
            self._update(seat, done)

    def _update(self, seat: _Seat, done: bool) -> None:
        """Reads a row's tokens so far (stream, stop strings, cancellation); a row the host ends
        (stop string, cancelled) frees its slot; a request is delivered with its last row."""
        request, i = seat.request, seat.index
        job = request.job
        if request.state.finish[i] is not None:
            return  # ended by an earlier read
        request.state._read(i, job, job.rows[i], seat.ids, done)
        if request.state.finish[i] is None:
            return
        if not done:  # the device still runs it: end it with the next chunk
            slot = self.seats.index(seat)
            self.seats[slot], self.stop[slot] = None, True
        if request.left == 0:
            results = [request.state.result(job, k) for k in range(len(job.rows))]
            if self.metrics:
                self.metrics.tokens.inc(sum(r.tokens for r in results))
            job.deliver("done", results)

    def _fail(self, admitted: list[Job], error: Exception) -> None:
        """A failed prefill or chunk: every request in flight gets the error; the slots restart."""
        seats = [s for s in self.seats if s is not None] + [s for s, _ in self.reads]
        for ahead in self._aheads:
            seats += ahead.seats[ahead.placed:]
        self._aheads = []
        jobs = {id(s.request.job): s.request.job for s in seats if s.request.left > 0}
        jobs.update({id(j): j for j in admitted})
        for job in jobs.values():
            job.deliver("error", f"{type(error).__name__}: {str(error)[:300]}")
        self.seats, self.stop, self.reads = [None] * len(self.seats), np.zeros_like(self.stop), []
        self.runner.reset()
