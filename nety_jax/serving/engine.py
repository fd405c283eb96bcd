"""The serving engine: a bounded request queue and dynamic batching onto one compiled function.

Requests are split into rows (one per completion). A worker thread takes the
first waiting request, keeps taking requests for ``window_ms`` (or until
``max_batch`` rows), and runs them as ONE batch: the batch size is rounded up to
a power of two and the prompt length to a multiple of ``data.bucket_multiple``,
with every sampling setting a per-row array, so steady state never recompiles.
The loop runs in chunks of ``chunk`` tokens: between chunks streamed rows get
their new text, stop strings end rows, and rows of cancelled requests are
stopped. A full queue refuses new requests (``QueueFull``: HTTP 429).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import threading
import time
from typing import Callable, Optional

import numpy as np

from nety_jax.config.sections import EOS_ID, PAD_ID
from nety_jax.data.prompts import PromptBatch, batch_bucket, bucket
from nety_jax.errors import NetyError
from nety_jax.serving.detokenize import IncrementalText


class QueueFull(Exception):
    """The request queue is at its bound."""


class EngineDown(Exception):
    """The engine's thread has stopped: no request can be answered any more (HTTP 503)."""


@dataclasses.dataclass
class Row:
    ids: list[int]  # prompt ids, already cut and checked
    temperature: float
    top_k: int
    top_p: float
    max_new_tokens: int
    seed: int
    stop: tuple = ()
    # the prompt's last ids when the text continues the prompt (/v1/completions of a language model):
    # the text is what follows their decoding, so a reply that starts a word keeps its leading space
    context: tuple = ()


@dataclasses.dataclass
class Job:
    rows: list[Row]
    deliver: Callable[[str, object], None]  # (kind, payload): "delta" | "done" | "error"
    stream: bool = False
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)
    created: float = dataclasses.field(default_factory=time.perf_counter)


@dataclasses.dataclass
class RowResult:
    text: str
    tokens: int
    finish_reason: str  # stop | length


def padded_prompts(rows: list[Row], b: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows``' prompts as (b, width) int32 ids (PAD after each) and (b,) lengths; the ``b -
    len(rows)`` padding rows are one token, the first row's first (a valid prompt)."""
    tokens, lengths = np.full((b, width), PAD_ID, np.int32), np.ones((b,), np.int32)
    for i, r in enumerate(rows):
        tokens[i, : len(r.ids)], lengths[i] = r.ids, len(r.ids)
    tokens[len(rows):, 0] = rows[0].ids[0]
    return tokens, lengths


def padded_settings(rows: list[Row], b: int) -> dict:
    """``rows``' sampling settings, each a list of ``b`` (the padding rows greedy, with no new
    tokens, seed 0), by the names ``SamplingParams.create`` takes."""
    fill = lambda values, pad: values + [pad] * (b - len(rows))
    return {"temperature": fill([r.temperature for r in rows], 0.0), "top_k": fill([r.top_k for r in rows], 0),
            "top_p": fill([r.top_p for r in rows], 1.0),
            "max_new_tokens": fill([r.max_new_tokens for r in rows], 0), "seed": fill([r.seed for r in rows], 0)}


class Worker:
    """The bounded queue and the thread both engines share; a subclass sets ``max_batch`` (the
    most rows one request may have), ``max_tokens`` and ``longest_prompt`` and runs ``_work``."""

    def __init__(self, backend, queue_size: int, metrics=None, stream_interval_ms: float = 0.0):
        self.backend, self.metrics = backend, metrics
        self.stream_interval = stream_interval_ms / 1000.0  # the least time between a stream's pieces
        # who passes deliveries on to another thread (``server._Mailbox``): told when a burst starts
        # and ends, so that a burst wakes that thread once, at its end
        self.bursts: list = []
        self.jobs: queue.Queue = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self.failure: Optional[str] = None  # why the thread stopped, if it died
        self._live: dict[int, Job] = {}  # requests submitted and not yet answered
        self._lock = threading.Lock()
        self._carry: Optional[Job] = None  # a request taken that did not fit: it leads the next admission
        self.thread = threading.Thread(target=self._serve, name="nety-engine", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        with self._lock:  # against the thread's death: a request is either refused or answered
            if self.failure is not None:
                raise EngineDown(self.failure)
            try:
                self.jobs.put_nowait(job)
            except queue.Full:
                if not self._drop_cancelled():
                    raise QueueFull() from None
                self.jobs.put_nowait(job)  # room now: only this thread (under the lock) puts
            self._live[id(job)] = job
            deliver = job.deliver

            def answered(kind: str, payload, key=id(job)) -> None:
                if kind != "delta":
                    self._live.pop(key, None)
                deliver(kind, payload)
            job.deliver = answered
        if self.metrics:
            self.metrics.queue_depth.set(self.jobs.qsize())

    def _drop_cancelled(self) -> int:
        """Takes the waiting requests whose clients went away out of the queue (they held places
        a live request was refused for, 429); returns how many."""
        with self.jobs.mutex:
            gone = [j for j in self.jobs.queue if j.cancelled.is_set()]
            if gone:
                kept = [j for j in self.jobs.queue if not j.cancelled.is_set()]
                self.jobs.queue.clear()
                self.jobs.queue.extend(kept)
                self.jobs.not_full.notify(len(gone))
        for job in gone:
            self.forget(job)
        return len(gone)

    def forget(self, job: Job) -> None:
        """A request dropped unanswered (its client went away before it ran) is no longer live."""
        self._live.pop(id(job), None)

    def waiting(self) -> int:
        """Requests waiting in the queue whose clients are still there."""
        with self.jobs.mutex:
            return sum(not j.cancelled.is_set() for j in self.jobs.queue)

    def _serve(self) -> None:
        """The thread's body. ``_work`` survives a failed batch; if it dies itself (a failure
        in its own error handling, a BaseException), every request waiting or running gets an
        error and later ones a refusal, so no client waits for a thread that is gone; the
        failure then ends the thread as it would have (``threading.excepthook`` reports it)."""
        try:
            self._work()
        except BaseException as e:
            with self._lock:
                self.failure = f"{type(e).__name__}: {str(e)[:300]}"
                waiting = list(self._live.values())
            for job in waiting:
                job.deliver("error", f"the engine stopped ({self.failure}); restart the server")
            raise

    def close(self) -> None:
        self._stop.set()

    @contextlib.contextmanager
    def _burst(self):
        """Deliveries made inside go on together at its end (each of ``bursts`` holds them),
        so the thread that answers clients is woken once for all of them, after this thread
        is done with them, rather than at the first and then contending for the interpreter
        lock with this thread while it makes the rest."""
        held = list(self.bursts)
        for b in held:
            b.hold()
        try:
            yield
        finally:
            for b in held:
                b.release()

    def reply_room(self, prompt_len: int) -> int:
        """The most new tokens a row may ask for after a prompt of ``prompt_len`` (0: the
        prompt is too long)."""
        return self.max_tokens if prompt_len <= self.longest_prompt else 0

    def _work(self) -> None:
        raise NotImplementedError


class Engine(Worker):
    """Dynamic batching: gather requests for ``window_ms``, run them as one batch to the end."""

    def __init__(self, backend, max_batch: int = 32, window_ms: float = 5.0, queue_size: int = 64,
                 chunk: int = 8, metrics=None, stream_interval_ms: float = 0.0):
        fixed = getattr(backend, "fixed_batch", 0)
        self.max_batch, self.window = min(max_batch, fixed or max_batch), window_ms / 1000.0
        self.chunk = chunk
        # the compiled maximum of new tokens fixes both bounds
        self.max_tokens, self.longest_prompt = backend.max_new_tokens, backend.prompt_limit
        self.max_tokens_why = getattr(backend, "max_tokens_why", None) or \
            f"this server's maximum of {backend.max_new_tokens} (nety-jax serve --max-tokens)"
        super().__init__(backend, queue_size, metrics, stream_interval_ms)

    # -- the worker -----------------------------------------------------------------------------
    def _collect(self) -> list[Job]:
        first = self.jobs.get()
        jobs, rows = [first], len(first.rows)
        deadline = time.perf_counter() + self.window
        while rows < self.max_batch:
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            try:
                job = self.jobs.get(timeout=left)
            except queue.Empty:
                break
            if rows + len(job.rows) > self.max_batch:
                self._carry = job  # it leads the next batch
                break
            jobs.append(job)
            rows += len(job.rows)
        live = []
        for job in jobs:  # one look at each: a request cancelled meanwhile is either run or forgotten
            if job.cancelled.is_set():
                self.forget(job)
            else:
                live.append(job)
        return live

    def _work(self) -> None:
        while not self._stop.is_set():
            if self._carry is not None:
                jobs, self._carry = [self._carry], None
            else:
                jobs = self._collect()
            if not jobs:
                continue
            try:
                self._run(jobs)
            except Exception as e:  # never let one batch take the server down
                for job in jobs:
                    job.deliver("error", f"{type(e).__name__}: {str(e)[:300]}")
            if self.metrics:
                self.metrics.queue_depth.set(self.jobs.qsize())

    def _run(self, jobs: list[Job]) -> None:
        rows = [(j, i, r) for j in jobs for i, r in enumerate(j.rows)]
        batch = self._prompt_batch([r for _, _, r in rows])
        state = _RowState(self.backend.tokenizer, rows, self.stream_interval)
        if self.metrics:
            self.metrics.batch_size.observe(len(rows))

        def on_chunk(tokens: np.ndarray, done: np.ndarray) -> np.ndarray:
            with self._burst():
                return state.update(tokens, done)

        tokens, lengths = self.backend.run(batch, [r for _, _, r in rows], on_chunk, self.chunk)
        with self._burst():
            state.update(tokens, np.ones(len(tokens), bool), final=True)
            for job in jobs:
                results = [state.result(job, i) for i in range(len(job.rows))]
                if self.metrics:
                    self.metrics.tokens.inc(sum(r.tokens for r in results))
                job.deliver("done", results)

    def warm_up(self, lengths=None) -> int:
        """Runs every batch shape once (each prompt bucket up to the longest prompt x each batch
        bucket; ``lengths``: only these prompt lengths' buckets), a row ending early and chunks
        that follow chunks, so that a live server never compiles under load. Returns how many
        batches it ran. A prefix cache is emptied after."""
        multiple = self.backend.data_cfg.bucket_multiple
        length_of = {min(bucket(n, multiple), self.longest_prompt): n
                     for n in (lengths or range(1, self.longest_prompt + 1))}
        fixed, runs = getattr(self.backend, "fixed_batch", 0), 0
        for n in length_of.values():
            b = 1
            while b <= (fixed or batch_bucket(self.max_batch)):
                rows = [Row([EOS_ID + 2] * n, 0.0, 0, 1.0, min(4 * self.chunk, self.max_tokens), i)
                        for i in range(min(b, self.max_batch))]
                self.backend.run(self._prompt_batch(rows), rows, _StopFirstRowLater(), self.chunk)
                runs, b = runs + 1, 2 * b if not fixed else fixed + 1
        cache = getattr(getattr(self.backend, "model", None), "prefix_cache", None)
        if cache is not None:  # the warm-up's prompts are nobody's
            cache.clear()
            cache.stats = type(cache.stats)()
        return runs

    def _prompt_batch(self, rows: list[Row]) -> PromptBatch:
        b = getattr(self.backend, "fixed_batch", 0) or batch_bucket(len(rows))
        # the bucket never exceeds the longest prompt the model takes with the compiled maximum of
        # new tokens: a padded prompt needs the positions of a real one
        s = min(bucket(max(len(r.ids) for r in rows), self.backend.data_cfg.bucket_multiple),
                self.backend.prompt_limit)
        return PromptBatch(*padded_prompts(rows, b, s), len(rows), [])


class _StopFirstRowLater:
    """A warm-up batch's ``on_chunk``: a chunk after a chunk, then the first row stopped by the
    host (its ``done`` flags replaced) while the others go on."""

    def __init__(self):
        self.calls = 0

    def __call__(self, tokens: np.ndarray, done: np.ndarray) -> np.ndarray:
        self.calls += 1
        return (np.arange(len(tokens)) == 0) & (self.calls == 2)


class _RowState:
    """Per row: the text so far, what was streamed, whether a stop string or <eos> ended it. A
    stream gets its first text at once, then at most one piece every ``interval`` seconds (and
    its end at once): each piece is work on both server threads and a write that wakes the
    client, so pieces faster than anyone reads them only cost throughput."""

    def __init__(self, tokenizer, rows, interval: float = 0.0):
        self.tokenizer, self.rows = tokenizer, rows
        self.interval, self.sent_at = interval, [0.0] * len(rows)
        self.index = {(id(j), i): k for k, (j, i, _) in enumerate(rows)}
        self.text = [""] * len(rows)
        self.sent = [""] * len(rows)  # text already streamed
        self.ntok = [0] * len(rows)
        self.clean = [0] * len(rows)  # ids read without a stop string (the next scan starts there)
        self.finish = [None] * len(rows)
        # each row's text so far, decoding only what each read adds (a continuation after its prompt)
        self.texts = [IncrementalText(tokenizer, row.context) for _, _, row in rows]

    def update(self, tokens: np.ndarray, done: np.ndarray, final: bool = False) -> np.ndarray:
        """Reads the tokens so far (B, T); returns the rows to stop now (stop string, cancelled)."""
        stop_now = np.zeros(len(tokens), bool)
        for k, (job, _, row) in enumerate(self.rows):
            if self.finish[k] is None:
                self._read(k, job, row, tokens[k][: row.max_new_tokens].tolist(), bool(done[k]) or final)
            stop_now[k] = self.finish[k] is not None
        return stop_now

    def _read(self, k: int, job: Job, row: Row, generated: list, done: bool) -> None:
        """Reads row ``k``'s generated ids so far (a list of ints that only grows)."""
        ids, ended = reply_ids(generated)
        text = self.texts[k].update(ids)
        self.ntok[k] = len(ids) + (1 if ended else 0)
        stopped = None
        if row.stop and first_stop(text, row.stop) >= 0:
            decoder = _Continuing(self.tokenizer, row.context) if row.context else self.tokenizer
            stopped = stop_at(decoder, ids, row.stop, text, self.clean[k])
        self.clean[k] = len(ids)
        if stopped is not None:
            text, self.ntok[k] = stopped
            self.finish[k] = "stop"
        elif ended:
            self.finish[k] = "stop"
        elif done:
            self.finish[k] = "length"
        self.text[k] = text
        if job.cancelled.is_set():
            self.finish[k] = self.finish[k] or "cancelled"
        if job.stream:
            self._send(k, job, row, text)

    def _send(self, k: int, job: Job, row: Row, text: str) -> None:
        """Streams the new text that can no longer change: while the row runs, a tail that may
        still become a stop string (or an incomplete UTF-8 character) is held back, so the
        streamed pieces join to exactly the non-streamed text."""
        if self.finish[k] is None:
            if not self.due(k):
                return
            text = text[: len(text) - held_back(text, row.stop)]
        if len(text) > len(self.sent[k]) and text.startswith(self.sent[k]):
            job.deliver("delta", (self.rows[k][1], text[len(self.sent[k]):]))
            self.sent[k], self.sent_at[k] = text, time.perf_counter()

    def due(self, k: int) -> bool:
        """Whether row ``k``'s stream may get text now: its first text at once, then at most one
        piece every ``interval`` seconds (its end at once too)."""
        return not self.sent[k] or time.perf_counter() - self.sent_at[k] >= self.interval

    def result(self, job: Job, i: int) -> RowResult:
        k = self.index[(id(job), i)]
        return RowResult(self.text[k], self.ntok[k], self.finish[k] or "length")


class _Continuing:
    """Decodes a reply as the continuation of ``context`` (its prompt's last ids): the text that
    decoding them together adds, as OpenAI's completions return it (prompt + text is the whole
    text: a first token that starts a word keeps its space, which decoding it alone drops)."""

    def __init__(self, tokenizer, context):
        self.tokenizer, self.context = tokenizer, list(context)
        self.head = tokenizer.decode(self.context)

    def decode(self, ids) -> str:
        whole = self.tokenizer.decode(self.context + list(ids))
        return whole[len(self.head):] if whole.startswith(self.head) else self.tokenizer.decode(ids)


def reply_ids(generated: list) -> tuple[list, bool]:
    """(the reply's ids, whether <eos> ended it): ``generated`` up to its first <eos>, without
    padding (a row that is not live yet)."""
    ended = EOS_ID in generated
    ids = generated[: generated.index(EOS_ID)] if ended else generated
    return ([t for t in ids if t != PAD_ID] if PAD_ID in ids else ids), ended


def first_stop(text: str, stops) -> int:
    """Where the earliest stop string starts in ``text`` (-1: none)."""
    return min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)


def stop_at(tokenizer, ids: list, stops, text: str, clean: int = 0):
    """``(text, tokens)`` of a row that a stop string ends, or None. A row stops after the first
    token whose text holds a stop string (whatever the chunk size), its text cut where the
    earliest stop string starts, as OpenAI's API and vLLM do. ``clean``: a count of first ids
    already known to hold none (a text only grows at its end)."""
    if first_stop(text, stops) < 0:
        return None
    for n in range(clean + 1, len(ids) + 1):  # once per row: the token that completed the stop
        part = tokenizer.decode(ids[:n])
        cut = first_stop(part, stops)
        if cut >= 0:
            return part[:cut], n
    return text[: first_stop(text, stops)], len(ids)  # a decoding that rewrote earlier text


def held_back(text: str, stops) -> int:
    """How many characters at the end of ``text`` must wait: the longest tail that begins a stop
    string, or a trailing replacement character (bytes of a character still to come)."""
    hold = len(text) - len(text.rstrip("\ufffd"))
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:n]):
                hold = n
                break
    return hold


def random_seed() -> int:
    return int.from_bytes(os.urandom(4), "little")


class PretrainedBackend:
    """A run directory's model: the streaming loop (start + continue in chunks) for dynamic
    batching, and decode slots for continuous batching (``serving/continuous.py``)."""

    continuous = True

    def __init__(self, pretrained, max_new_tokens: Optional[int] = None, speculate: str = "none",
                 draft_tokens: int = 4):
        from nety_jax.serving.settings import resolve
        self.model, self.tokenizer = pretrained, pretrained.tokenizer
        self.data_cfg, self.decode = pretrained.config.data, pretrained.config.decode
        self.prompts, self.task = pretrained.model.prompts, pretrained.model.task
        room = self.prompts.max_new_tokens()
        if max_new_tokens is not None and max_new_tokens > room:
            raise NetyError(f"--max-tokens={max_new_tokens} is more than this model can produce: model.max_len="
                            f"{self.prompts.model_cfg.max_len} leaves room for at most {room} new tokens")
        self.max_tokens_asked = max_new_tokens  # --max-tokens: continuous batching's cap (None: the room)
        self.max_new_tokens = min(max_new_tokens or self.decode.max_new_tokens, room)
        self.prompt_limit = self.prompts.limit(self.data_cfg, self.max_new_tokens)
        self.spec = resolve(self.decode, self.prompts, 1,
                            {"beam_size": 1, "speculate": speculate, "draft_tokens": draft_tokens,
                             "max_new_tokens": min(self.decode.max_new_tokens, self.max_new_tokens)},
                            compiled_max=self.max_new_tokens).spec
        # continuous batching's slots step one token a row: only the dynamic engine speculates
        self.continuous = not self.spec.speculative

    def run(self, batch: PromptBatch, rows: list[Row], on_chunk, chunk: int):
        import jax
        from nety_jax.decoding import SamplingParams, continue_stream
        from nety_jax.decoding.generation import stream_result, stream_tokens
        from nety_jax.serving.prefix_cache import prefill
        params = SamplingParams.create(batch.tokens.shape[0], **padded_settings(rows, batch.tokens.shape[0]))
        variables, model, spec = self.model.variables, self.model.model, self.spec
        state = prefill(getattr(self.model, "prefix_cache", None), model, variables, batch.tokens, batch.lengths,
                        len(rows), params, spec, self.data_cfg.bucket_multiple)
        while True:
            tokens = np.asarray(stream_tokens(state, spec))
            stop = on_chunk(tokens[: len(rows)], np.asarray(state.done)[: len(rows)])
            if stop.any():
                done = np.asarray(state.done).copy()
                done[: len(rows)] |= stop
                # placed as the loop's own output: an uncommitted array would compile the loop again
                state = state.replace(done=jax.device_put(done, state.done.sharding))
            if bool(np.all(np.asarray(state.done))) or int(state.pos) >= spec.max_new_tokens:
                break
            state = continue_stream(variables, state, int(state.pos) + chunk, model=model, spec=spec)
        out = stream_result(state, spec)
        return np.asarray(out["tokens"])[: len(rows)], np.asarray(out["lengths"])[: len(rows)]


class ExportedBackend:
    """An exported artifact: one call per batch (its while_loop cannot pause), so a stream gets
    its text in one piece."""

    def __init__(self, exported, max_new_tokens: Optional[int] = None):
        self.model, self.tokenizer = exported, exported.tokenizer
        self.data_cfg, self.decode = exported.config.data, exported.config.decode
        self.prompts = exported.prompts
        self.task = exported.task
        compiled = exported.info["max_new_tokens"]
        if max_new_tokens is not None and max_new_tokens > compiled:
            raise NetyError(f"--max-tokens={max_new_tokens} is more than the export's compiled maximum of "
                            f"{compiled} (re-export with --set decode.max_new_tokens=N)")
        self.max_new_tokens = max_new_tokens or compiled
        # what bounds a request's max_tokens, for its 400: --max-tokens can only lower the export's
        self.max_tokens_why = (f"this server's maximum of {max_new_tokens} (nety-jax serve --max-tokens)"
                               if max_new_tokens else f"this export's compiled maximum of {compiled} (re-export "
                                                      f"with --set decode.max_new_tokens=N to raise it)")
        self.prompt_limit = self.prompts.limit(self.data_cfg, compiled)  # the artifact's constraint
        self.fixed_batch = exported.info.get("batch") if isinstance(exported.info.get("batch"), int) else 0
        self.runtime_options = list(exported.info.get("options", ()))  # what a request may set (server._rows)

    def run(self, batch: PromptBatch, rows: list[Row], on_chunk, chunk: int):
        settings = padded_settings(rows, batch.tokens.shape[0])
        tokens, lengths, _ = self.model.generate_ids(batch.tokens, batch.lengths, settings.pop("seed"), **settings)
        return tokens[: len(rows)], lengths[: len(rows)]
