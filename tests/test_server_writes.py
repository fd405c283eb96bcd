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


def test_a_stream_gets_its_first_text_at_once_then_a_piece_per_interval_and_its_end_at_once(monkeypatch):
    from nety_jax.data.tokenizer import WordTokenizer
    from nety_jax.serving import engine
    from nety_jax.serving.engine import Job, Row, _RowState
    tok = WordTokenizer.build("le chat mange du pain et le chien dort", 100)
    ids = tok.encode("le chat mange du pain et le chien dort")
    pieces, now = [], [0.0]
    monkeypatch.setattr(engine.time, "perf_counter", lambda: now[0])
    job = Job([Row([5], 0.0, 0, 1.0, len(ids), 0)], lambda kind, payload: pieces.append(payload[1]), stream=True)
    state = _RowState(tok, [(job, 0, job.rows[0])], interval=0.02)
    reads = [(2, 0.0), (3, 0.005), (5, 0.015), (6, 0.021), (7, 0.030), (8, 0.035)]
    for n, t in reads:  # a read every chunk: the first text goes out, then one piece per 20 ms
        now[0] = t
        assert state.due(0) == (n in (2, 6)), (n, t)
        state._read(0, job, job.rows[0], ids[:n], False)
    assert pieces == [tok.decode(ids[:2]), tok.decode(ids[:6])[len(tok.decode(ids[:2])):]]
    now[0] = 0.036
    state._read(0, job, job.rows[0], ids, True)  # its end goes at once, whatever the interval
    assert "".join(pieces) == tok.decode(ids) and len(pieces) == 3 and state.finish[0] == "length"


def test_an_engine_burst_wakes_the_event_loop_once_at_its_end_even_when_it_fails():
    from nety_jax.serving import server
    from nety_jax.serving.engine import Worker

    class Loop:  # records wake-ups instead of running them
        def __init__(self):
            self.calls = []

        def call_soon_threadsafe(self, fn):
            self.calls.append(fn)
    loop, events = Loop(), asyncio.Queue()
    mail = server._Mailbox(loop)
    worker = Worker.__new__(Worker)  # its burst only: no thread
    worker.bursts = [mail]
    with worker._burst():
        mail.post(events, 1)
        loop.calls and loop.calls.pop()()  # a wake-up now would run at once
        mail.post(events, 2)
        assert loop.calls == [] and events.empty()
    assert len(loop.calls) == 1
    loop.calls.pop()()
    assert [events.get_nowait(), events.get_nowait()] == [1, 2]
    with worker._burst():  # nothing delivered: nothing to wake for
        pass
    assert loop.calls == []
    try:
        with worker._burst():
            mail.post(events, 3)
            raise RuntimeError("a failed read")
    except RuntimeError:
        pass
    assert len(loop.calls) == 1 and mail.held == 0  # released all the same
