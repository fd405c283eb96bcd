"""The HTTP server's writes: one per connection per turn of the event loop (``server._OneWrite``)."""
import asyncio

from nety_jax.serving.server import _OneWrite


class _Recorder:
    def __init__(self):
        self.writes, self.closed = [], False

    def write(self, data):
        self.writes.append(bytes(data))

    def is_closing(self):
        return self.closed

    def close(self):
        self.closed = True

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 1) if name == "peername" else default


def test_writes_of_one_turn_go_out_as_one_and_close_flushes_first():
    async def run():
        inner = _Recorder()
        out = _OneWrite(inner, asyncio.get_running_loop())
        out.write(b"HTTP/1.1 200 OK\r\n\r\n")
        out.write(b"")
        out.write(memoryview(b"body"))
        assert inner.writes == []  # not before the turn ends
        await asyncio.sleep(0)
        assert inner.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
        out.write(b"next")
        await asyncio.sleep(0)
        out.write(b"last")
        out.close()  # what is pending goes out before the connection closes
        assert inner.writes[1:] == [b"next", b"last"] and inner.closed
        assert out.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest is the transport's own
        out.write(b"late")
        await asyncio.sleep(0)
        assert inner.writes[-1] == b"last"  # nothing written to a closing transport
    asyncio.run(run())
