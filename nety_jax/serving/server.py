"""``nety-jax serve``: an OpenAI-compatible HTTP server (FastAPI + uvicorn) over the engine.

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions`` (OpenAI's request and
response shapes; ``top_k`` as an extension; ``stream: true`` sends server-sent
events), ``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus text).
Every bad request gets a 4xx with an OpenAI-style error naming the field; a full
queue gets 429; nothing a client sends stops the server.
"""
from __future__ import annotations

import asyncio
import gc
import json
import threading
import time
import uuid
from typing import Optional, Sequence

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from nety_jax.serving.api import MAX_PROMPT_CHARS, ApiError, ChatRequest, CompletionRequest, error_body
from nety_jax.serving.engine import Engine, EngineDown, Job, QueueFull, Row, Worker, random_seed
from nety_jax.serving.metrics import Metrics, metrics_for
from nety_jax.serving.middleware import MAX_BODY_BYTES, BodyLimit, CountRequests, add_error_handlers
from nety_jax.serving.options import (ADMIT_BATCH_NEEDS_CONTINUOUS, CONTINUOUS_NEEDS_CHECKPOINT,
                                      SPECULATE_NEEDS_DYNAMIC, check_admit_batch, check_exported, check_options,
                                      check_source, check_speculation, listen_socket)
from nety_jax.serving.settings import MAX_SEED
from nety_jax.serving.transport import _OneWrite as _OneWrite  # where tests/test_server_writes.py takes it
from nety_jax.serving.transport import http_server

# the least time between two pieces of a stream (its first text and its end go at once): faster
# than a reader reads, while each piece costs both server threads and a write that wakes the client
STREAM_INTERVAL_MS = 20.0
CONTEXT_IDS = 8  # prompt ids a continuation's text is decoded after (enough for a split UTF-8 character)


def _rows(backend, engine, prompts: list[str], req, continues: bool = False) -> tuple[list[Row], int]:
    """Per-row settings from a request: prompts checked against the model, defaults filled. A
    reply's length is bounded by ``engine.reply_room`` (the room after the prompt); without
    ``max_tokens`` it is the run's ``decode.max_new_tokens``, or that room if less. ``continues``:
    the text continues the prompt (a language model's completion), decoded after its last ids."""
    d = backend.decode
    _check_runtime(backend, req)
    field = "max_completion_tokens" if getattr(req, "max_completion_tokens", None) else "max_tokens"
    asked = getattr(req, field)
    if asked is not None and asked > engine.max_tokens:
        raise ApiError(400, f"{field}={asked} is more than {engine.max_tokens_why}", field)
    rows, prompt_tokens = [], 0
    for p, text in enumerate(prompts):
        ids = backend.prompts.ids(backend.tokenizer, text.strip(), backend.data_cfg)
        if not ids:
            raise ApiError(400, "the prompt has no tokens this model knows", "prompt")
        room = engine.reply_room(len(ids))
        if room == 0:
            raise ApiError(400, f"the prompt is {len(ids)} tokens; this model takes at most "
                                f"{engine.longest_prompt}", "prompt")
        if asked is not None and asked > room:
            raise ApiError(400, f"{field}={asked} is more than this model can produce after a prompt of "
                                f"{len(ids)} tokens (room for {room}: the context length less the prompt)", field)
        max_new = asked or min(d.max_new_tokens, room)
        prompt_tokens += len(ids)  # OpenAI counts a prompt once, whatever n
        for j in range(req.n):
            seed = (req.seed + p * req.n + j) % (MAX_SEED + 1) if req.seed is not None else random_seed()
            rows.append(Row(ids, d.temperature if req.temperature is None else req.temperature,
                            d.top_k if req.top_k is None else req.top_k,
                            d.top_p if req.top_p is None else req.top_p, max_new, seed, tuple(req.stop or ()),
                            tuple(ids[-CONTEXT_IDS:]) if continues else ()))
    return rows, prompt_tokens


def _check_runtime(backend, req) -> None:
    """A request's sampling fields, where the backend takes only some at run time (an export
    takes what it was compiled to take: a beam search none), or a 400 naming the field: never a
    reply that silently ignored them."""
    options = getattr(backend, "runtime_options", None)
    if options is None:
        return
    for name in ("temperature", "top_k", "top_p", "seed"):
        if getattr(req, name, None) is not None and name not in options:
            raise ApiError(400, f"{name}: this export does not take it at run time (it takes: "
                                f"{', '.join(options) or 'nothing'}; re-export, or serve the run with "
                                f"--checkpoint)", name)
    if req.n > 1 and backend.decode.beam_size > 1:
        raise ApiError(400, f"n={req.n}: this export runs beam search and returns one reply per prompt; the n best "
                            "replies need the run directory (--checkpoint)", "n")


def _choice(kind: str, index: int, text: Optional[str], finish: Optional[str], delta: bool) -> dict:
    if kind == "text_completion":
        return {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
    if delta:
        return {"index": index, "delta": {} if text is None else {"content": text}, "finish_reason": finish}
    return {"index": index, "message": {"role": "assistant", "content": text}, "finish_reason": finish}


class _Mailbox:
    """Events from the engine thread to one event loop, with one wake-up of the loop for all
    the events posted before it runs (an engine step delivers to many requests at once) rather
    than one ``call_soon_threadsafe`` per event: each is a write to the loop's wake-up pipe and
    a turn of the loop, on the same cores as the engine."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.lock, self.items, self.waking, self.held = loop, threading.Lock(), [], False, 0

    def post(self, queue: asyncio.Queue, item) -> None:
        with self.lock:
            self.items.append((queue, item))
            if self.waking or self.held:
                return
            self.waking = True
        self.loop.call_soon_threadsafe(self._deliver)

    def hold(self) -> None:
        """Posts wait for ``release`` (the engine's burst of deliveries: ``Worker._burst``)."""
        with self.lock:
            self.held += 1

    def release(self) -> None:
        with self.lock:
            self.held -= 1
            if self.held or self.waking or not self.items:
                return
            self.waking = True
        self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self.lock:
            items, self.items, self.waking = self.items, [], False
        for queue, item in items:
            queue.put_nowait(item)


class Server:
    def __init__(self, backend, name: str, engine: Worker, metrics: Metrics):
        self.backend, self.name, self.engine, self.metrics = backend, name, engine, metrics
        self.mail: Optional[_Mailbox] = None

    def _mailbox(self, loop: asyncio.AbstractEventLoop) -> _Mailbox:
        if self.mail is None or self.mail.loop is not loop:  # a test client may run several loops
            old, self.mail = self.mail, _Mailbox(loop)
            bursts = self.engine.bursts
            bursts[:] = [b for b in bursts if b is not old] + [self.mail]
        return self.mail

    async def run(self, request: Request, prompts: list[str], req, kind: str, endpoint: str):
        if req.model is not None and req.model != self.name:  # as OpenAI and vLLM: never another model's reply
            raise ApiError(404, f"the model {req.model!r} does not exist; this server has {self.name!r}", "model",
                           "not_found_error")
        continues = kind == "text_completion" and getattr(self.backend.task, "continues_text", False)
        rows, prompt_tokens = _rows(self.backend, self.engine, prompts, req, continues)
        if len(rows) > self.engine.max_batch:
            raise ApiError(400, f"{len(rows)} completions in one request; this server batches at most "
                                f"{self.engine.max_batch} (lower n or send fewer prompts)", "n")
        events: asyncio.Queue = asyncio.Queue()
        mail = self._mailbox(asyncio.get_running_loop())
        job = Job(rows, lambda k, p: mail.post(events, (k, p)), req.stream)
        try:
            self.engine.submit(job)
        except QueueFull:
            raise ApiError(429, "the server is busy (its request queue is full); retry later", None,
                           "rate_limit_error") from None
        except EngineDown as e:
            raise ApiError(503, f"the server's engine stopped ({e}); restart the server", None,
                           "server_error") from None
        meta = {"id": f"{'cmpl' if kind == 'text_completion' else 'chatcmpl'}-{uuid.uuid4().hex[:24]}",
                "created": int(time.time()), "model": self.name}
        if req.stream:
            usage = prompt_tokens if req.stream_options and req.stream_options.include_usage else None
            return _EventStream(self._stream(job, events, kind, meta, usage), media_type="text/event-stream")
        while True:
            try:
                event, payload = await asyncio.wait_for(events.get(), timeout=0.25)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    job.cancelled.set()
                    return JSONResponse(error_body("client disconnected"), status_code=499)
                continue
            if event == "error":
                raise ApiError(500, f"generation failed: {payload}", None, "server_error")
            if event == "done":
                break
        choices = [_choice(kind, i, r.text, r.finish_reason, False) for i, r in enumerate(payload)]
        return JSONResponse({**meta, "object": "chat.completion" if kind != "text_completion" else kind,
                             "choices": choices, "usage": _usage(prompt_tokens, payload)})

    async def _stream(self, job: Job, events: asyncio.Queue, kind: str, meta: dict,
                      prompt_tokens: Optional[int]):
        """Server-sent events; with ``prompt_tokens`` (stream_options.include_usage), every chunk
        has ``usage: null`` and one more chunk, with no choices, has the request's usage. The
        events waiting when the loop gets to this stream go out in one write (a reply's last
        text, its finish reason, usage and ``[DONE]`` usually arrive together)."""
        obj = "text_completion" if kind == "text_completion" else "chat.completion.chunk"
        extra = {} if prompt_tokens is None else {"usage": None}
        sse = lambda body: f"data: {json.dumps({**meta, 'object': obj, **extra, **body})}\n\n"
        try:
            if kind != "text_completion":
                yield "".join(sse({"choices": [{"index": i, "delta": {"role": "assistant"}, "finish_reason": None}]})
                              for i in range(len(job.rows)))
            async for ready in _merged(events):
                out, ended = [], False
                for event, payload in ready:
                    ended = self._event_text(out, sse, kind, prompt_tokens, event, payload)
                    if ended:
                        out.append("data: [DONE]\n\n")
                        break
                yield "".join(out)
                if ended:
                    break
        finally:  # the client went away (or the stream ended): free its rows
            job.cancelled.set()

    @staticmethod
    def _event_text(out: list, sse, kind: str, prompt_tokens: Optional[int], event: str, payload) -> bool:
        """Appends one engine event's server-sent events to ``out``; True when the stream ends."""
        if event == "delta":
            index, text = payload
            out.append(sse({"choices": [_choice(kind, index, text, None, True)]}))
            return False
        if event == "error":
            out.append(f"data: {json.dumps(error_body(f'generation failed: {payload}', None, 'server_error'))}\n\n")
            return True
        for i, r in enumerate(payload):
            out.append(sse({"choices": [_choice(kind, i, None if kind != "text_completion" else "", r.finish_reason,
                                                True)]}))
        if prompt_tokens is not None:
            out.append(sse({"choices": [], "usage": _usage(prompt_tokens, payload)}))
        return True


class _EventStream(StreamingResponse):
    """A stream whose status line and headers wait for its first events, so that both go out in
    one write (``transport._OneWrite``); a client sees the first text at the same time either way."""

    async def stream_response(self, send) -> None:
        pieces = self.body_iterator.__aiter__()
        first = await anext(pieces, None)
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        if first is not None:
            await send({"type": "http.response.body", "body": first.encode(self.charset), "more_body": True})
            async for piece in pieces:
                await send({"type": "http.response.body", "body": piece.encode(self.charset), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _merged(events: asyncio.Queue):
    """A stream's events in lists: each list every event waiting when the loop got to it (one
    write for all), the text of consecutive deltas for the same completion joined into one
    (one server-sent event instead of several when the loop falls behind the engine: the
    stream's text is the same)."""
    while True:
        ready = [await events.get()]
        while not events.empty():
            ready.append(events.get_nowait())
        merged = []
        for event, payload in ready:
            last = merged[-1] if merged else None
            if event == "delta" and last and last[0] == "delta" and last[1][0] == payload[0]:
                merged[-1] = ("delta", (payload[0], last[1][1] + payload[1]))
            else:
                merged.append((event, payload))
        yield merged


def _usage(prompt_tokens: int, results) -> dict:
    completion = sum(r.tokens for r in results)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion}


def make_engine(backend, batching: Optional[str], max_batch: int, window_ms: float, queue_size: int,
                chunk: int, slots: int, metrics=None, stream_interval_ms: float = 0.0,
                admit_batch: Optional[int] = None) -> Worker:
    """The engine ``batching`` names; by default continuous batching where the backend can
    pause its loop (a run directory), dynamic batching otherwise (an exported artifact).
    ``admit_batch``: continuous batching's (None: its default); refused with dynamic batching."""
    from nety_jax.errors import NetyError
    can = getattr(backend, "continuous", False)
    batching = batching or ("continuous" if can else "dynamic")
    if batching == "dynamic" and admit_batch is not None:
        raise NetyError(ADMIT_BATCH_NEEDS_CONTINUOUS)
    if batching == "continuous":
        if getattr(getattr(backend, "spec", None), "speculative", False):
            raise NetyError(SPECULATE_NEEDS_DYNAMIC)
        if not can:
            raise NetyError(CONTINUOUS_NEEDS_CHECKPOINT)
        from nety_jax.serving.continuous import ContinuousEngine
        return ContinuousEngine(backend, slots=slots, chunk=chunk, queue_size=queue_size, metrics=metrics,
                                stream_interval_ms=stream_interval_ms, admit_batch=admit_batch)
    return Engine(backend, max_batch=max_batch, window_ms=window_ms, queue_size=queue_size, chunk=chunk,
                  metrics=metrics, stream_interval_ms=stream_interval_ms)


def create_app(backend, name: str, max_batch: int = 32, window_ms: float = 5.0, queue_size: int = 64,
               chunk: int = 8, batching: Optional[str] = None, slots: int = 32,
               stream_interval_ms: float = STREAM_INTERVAL_MS, admit_batch: Optional[int] = None) -> FastAPI:
    check_options(max_batch, window_ms, queue_size, None, chunk, batching, slots,
                  stream_interval_ms, admit_batch)  # without `serve` too
    metrics = metrics_for(backend)
    engine = make_engine(backend, batching, max_batch, window_ms, queue_size, chunk, slots, metrics,
                         stream_interval_ms, admit_batch)
    server = Server(backend, name, engine, metrics)
    app = FastAPI(title="nety-jax", version="1")
    app.state.server = server
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    app.add_middleware(CountRequests, metrics=metrics)
    add_error_handlers(app)
    _add_generation_routes(app, server, backend)
    _add_model_routes(app, name)
    _add_status_routes(app, name, engine, metrics)
    return app


def _add_generation_routes(app: FastAPI, server: Server, backend) -> None:
    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        return await server.run(request, req.prompt, req, "text_completion", "completions")

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, request: Request):
        prompt = req.prompt(backend.task)
        if len(prompt) > MAX_PROMPT_CHARS:  # each message is bounded, their number is not
            raise ApiError(400, f"the conversation is {len(prompt):,} characters; at most {MAX_PROMPT_CHARS:,}",
                           "messages")
        return await server.run(request, [prompt], req, "chat", "chat")


def _add_model_routes(app: FastAPI, name: str) -> None:
    card = {"id": name, "object": "model", "created": 0, "owned_by": "nety-jax"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        if model_id != name:
            raise ApiError(404, f"the model {model_id!r} does not exist; this server has {name!r}", "model",
                           "not_found_error")
        return card


def _add_status_routes(app: FastAPI, name: str, engine: Worker, metrics: Metrics) -> None:
    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health():
        if engine.failure is not None:  # a load balancer takes a server whose engine died out of service
            return JSONResponse({"status": "failed", "model": name, "error": engine.failure}, status_code=503)
        return {"status": "ok", "model": name, "queue": engine.waiting(),
                "max_batch": engine.max_batch, "max_tokens": engine.max_tokens,
                "batching": "continuous" if engine.__class__.__name__ == "ContinuousEngine" else "dynamic"}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.text(), media_type="text/plain; version=0.0.4")


def serve(checkpoint: Optional[str], exported: Optional[str], host: str = "127.0.0.1", port: int = 8000,
          max_batch: int = 32, window_ms: float = 5.0, queue_size: int = 64, max_tokens: Optional[int] = None,
          chunk: int = 8, name: Optional[str] = None, batching: Optional[str] = None, slots: int = 32,
          prefix_cache_mb: float = 0, mesh_tensor: int = 1, speculate: str = "none",
          draft_tokens: int = 4, warm_up: bool = True, stream_interval_ms: Optional[float] = None,
          admit_batch: Optional[int] = None, changed: Sequence[str] = ()) -> int:
    """``nety-jax serve``; ``changed``: the flags given a value other than their default."""
    import os

    from nety_jax.serving.engine import ExportedBackend, PretrainedBackend
    check_source(checkpoint, exported)
    stream_interval_ms = STREAM_INTERVAL_MS if stream_interval_ms is None else stream_interval_ms
    check_options(max_batch, window_ms, queue_size, max_tokens, chunk, batching, slots, stream_interval_ms,
                  admit_batch)
    check_speculation(speculate, draft_tokens, batching, exported)
    check_admit_batch(admit_batch, slots, batching, exported, speculate)
    check_exported(exported, batching, mesh_tensor, changed)
    sock = listen_socket(host, port)  # before the model loads: a taken port fails at once
    port = sock.getsockname()[1]
    if exported:
        from nety_jax.serving.export import load_exported
        backend = ExportedBackend(load_exported(exported), max_tokens)
    else:
        from nety_jax.serving.pretrained import load_pretrained
        backend = PretrainedBackend(load_pretrained(checkpoint, prefix_cache_mb=prefix_cache_mb,
                                                   mesh_tensor=mesh_tensor), max_tokens,
                                    speculate, draft_tokens)
    name = name or os.path.basename(os.path.abspath(checkpoint or exported))
    app = create_app(backend, name, max_batch, window_ms, queue_size, chunk, batching, slots, stream_interval_ms,
                     admit_batch)
    engine = app.state.server.engine
    how = batching_line(engine, slots, chunk, window_ms)
    if getattr(backend.model, "prefix_cache", None) is not None:
        how += f", prefix cache {prefix_cache_mb:g} MB"
    if mesh_tensor > 1:
        how += f", tensor-parallel over {mesh_tensor} devices"
    if speculate != "none":
        how += f", speculating ({speculate}, {draft_tokens} draft tokens)"
    if warm_up:
        warm(engine)
    print(f"serving {name} ({backend.task.name}) on http://{host}:{port}/v1 ({how}, queue {queue_size}, "
          f"max_tokens up to {engine.max_tokens}, prompts up to {engine.longest_prompt} tokens)", flush=True)
    settle()
    http_server(app).run(sockets=[sock])
    return 0


def batching_line(engine, slots: int, chunk: int, window_ms: float) -> str:
    """How the server batches, for its start-up line: the engine's own maximum batch, which a
    fixed-batch export bounds below ``--max-batch``, and its admit batch (its default when
    ``--admit-batch`` is not given)."""
    if engine.__class__.__name__ == "ContinuousEngine":
        return f"continuous batching, {slots} slots, chunk {chunk}, admit batch {engine.admit_batch}"
    return f"dynamic batching, max batch {engine.max_batch}, window {window_ms:g} ms"


def warm(engine) -> None:
    """Compiles every program the engine can meet (each prompt bucket x batch bucket) before the
    server listens, so that no request waits for a compile under load (``--no-warm-up``: on
    first use instead)."""
    start, cpu = time.perf_counter(), time.process_time()
    print("warming up (compiling every prompt and batch shape; --no-warm-up skips this) ...", flush=True)
    runs = engine.warm_up()
    print(f"warmed up: {runs} admission shapes in {time.perf_counter() - start:.1f} s "
          f"({time.process_time() - cpu:.1f} s of CPU)", flush=True)


def settle() -> None:
    """Once the model is loaded, before serving: every object alive now (the interpreter's,
    JAX's, the model's: a few hundred thousand) is moved out of the garbage collector's sight.
    Otherwise each full collection, which the allocations of serving trigger every few seconds,
    rescans them all while holding the interpreter lock: the engine and the HTTP thread stop
    together for hundreds of milliseconds, which is the p99 time to first token."""
    gc.collect()  # what is garbage now is freed, not frozen
    gc.freeze()

