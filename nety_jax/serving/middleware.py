"""What wraps every HTTP request of the server: its count and latency (``CountRequests``), a bound
on its body (``BodyLimit``, 413), and every error as an OpenAI-style JSON body
(``add_error_handlers``)."""
from __future__ import annotations

import json
import logging
import re
import time
from typing import Optional

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from nety_jax.serving.api import ApiError, ChatRequest, CompletionRequest, error_body

log = logging.getLogger("nety_jax.serve")


class CountRequests:
    """Counts every HTTP request and its latency (to the end of its body, streams too). A plain
    ASGI middleware: ``@app.middleware("http")`` would pass every response, and every piece of
    a stream, through extra tasks and queues, work that competes with the engine for the CPU."""

    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]  # an exception is answered 500 by the crash handler

        async def send_seen(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, send_seen)
        finally:
            self.metrics.count_request(scope, status[0], start)


MAX_BODY_BYTES = 32 << 20  # 64 prompts of MAX_PROMPT_CHARS, JSON-escaped, fit many times over


class BodyTooLarge(HTTPException):
    """Raised while the body is read: FastAPI passes its HTTPExceptions through (any other error
    there becomes a 400 "error parsing the body")."""

    def __init__(self, message: str):
        super().__init__(413, message, {"Connection": "close"})


class BodyLimit:
    """Refuses a request body over ``limit`` bytes (413), by its Content-Length before reading it
    or, sent in chunks, as soon as it passes the limit: the whole body was read into memory and
    parsed, and its text tokenized on the event loop, so one client's 240 MB of messages froze
    every request for a minute and took gigabytes."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", ())).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            body = json.dumps(error_body(_too_large(int(length)), None)).encode()
            await send({"type": "http.response.start", "status": 413,
                        "headers": [(b"content-type", b"application/json"), (b"connection", b"close")]})
            return await send({"type": "http.response.body", "body": body})
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyTooLarge(_too_large(seen))
            return message
        await self.app(scope, counted, send)


def _too_large(size: int) -> str:
    return f"the request body is {size:,} bytes or more; this server takes at most {MAX_BODY_BYTES:,}"


_FIELDS = set(CompletionRequest.model_fields) | set(ChatRequest.model_fields) | {"role", "content"}


def _first_param(exc: RequestValidationError) -> tuple[Optional[str], str]:
    """The field a validation error names (None: the body) and its one-line message."""
    errors = exc.errors()
    if not errors:
        return None, "invalid request"
    err = errors[0]
    if err.get("type") == "json_invalid":
        return None, "malformed JSON body"
    # pydantic adds union members ("str", "list[str]") to the location: they are not fields
    loc = [str(x) for x in err.get("loc", ()) if x != "body" and not re.fullmatch(r"[a-z-]+(\[.*\])?", str(x))
           or isinstance(x, str) and x in _FIELDS]
    param = ".".join(loc) or None
    return param, f"{param or 'body'}: {err.get('msg', 'invalid').removeprefix('Value error, ')}"


def add_error_handlers(app: FastAPI) -> None:
    """Every error leaves as an OpenAI-style JSON body: 400 for a bad field, 404/405 for a wrong
    path or method, the ApiError's own status, and 500 (logged) for anything else."""
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        param, message = _first_param(exc)
        kind = request.headers.get("content-type", "")
        if param is None and "json" not in kind.lower():  # FastAPI reads only a JSON-typed body as JSON
            message = f"body: send it as JSON with the header Content-Type: application/json (got {kind or 'none'})"
        return JSONResponse(error_body(message, param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):  # unknown path, wrong method
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse(error_body(message, None, "not_found_error" if exc.status_code == 404 else
                                       "invalid_request_error"), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        headers = {"Retry-After": "1"} if exc.status == 429 else None
        return JSONResponse(error_body(exc.message, exc.param, exc.kind), status_code=exc.status, headers=headers)

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception):
        log.exception("request failed")
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}", None, "server_error"),
                            status_code=500)

