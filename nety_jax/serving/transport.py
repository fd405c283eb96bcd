"""uvicorn under ``nety-jax serve``'s app: a graceful shutdown bounded in time, and one write per
connection per turn of the event loop (``_OneWrite``)."""
from __future__ import annotations

import asyncio
import logging

SHUTDOWN_GRACE_S = 30.0  # as Kubernetes' default grace period before its SIGKILL


def http_server(app, grace_s: float = SHUTDOWN_GRACE_S):
    """uvicorn over ``app`` (an ASGI app). On SIGTERM / Ctrl-C it stops accepting, lets the requests it holds
    finish for ``grace_s`` seconds and then cancels what is left: without that bound one client
    that sent half a request (or stops reading its stream) kept the server from stopping. Each
    connection's writes made in one turn of the event loop go out as one (``_OneWrite``)."""
    import uvicorn
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=grace_s, http=_one_write_protocol())
    logging.getLogger("uvicorn.error").addFilter(_no_cancelled_traceback)  # after Config sets logging up
    return uvicorn.Server(config)


class _OneWrite:
    """A connection's transport whose writes made in one turn of the event loop go out as ONE
    write, at the end of the turn. uvicorn writes a response's status line and headers, each
    piece of its body and a chunked body's end marker separately, each a system call that on a
    local connection also runs the receiver's side of TCP, holding the interpreter lock the
    engine thread needs: the HTTP thread's largest cost at saturation. A whole JSON reply is
    written in one turn, so it becomes one write; so are a stream's last events and its end."""

    def __init__(self, transport, loop):
        self._transport, self._loop, self._pending = transport, loop, []

    def write(self, data) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending and not self._transport.is_closing():
            self._transport.write(b"".join(pending))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name):  # everything else as the transport's own
        return getattr(self._transport, name)


def _one_write_protocol():
    """uvicorn's HTTP protocol (the one ``http="auto"`` picks) over ``_OneWrite`` transports."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class OneWriteProtocol(AutoHTTPProtocol):
        def connection_made(self, transport) -> None:
            super().connection_made(_OneWrite(transport, self.loop))
    return OneWriteProtocol


def _no_cancelled_traceback(record: logging.LogRecord) -> bool:
    """uvicorn logs each request it cancels at the end of the grace period with a traceback; its
    one line "Cancel N running task(s)" says it."""
    return not (record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError))
