"""The server under load (serving/server.py, serving/continuous.py): what keeps its tail latency
and its CPU per token down."""
import gc

from nety_jax.serving import server


def test_serve_moves_the_start_up_heap_out_of_the_collectors_sight_before_listening(trained_gpt, monkeypatch):
    """A full collection rescans every object alive (hundreds of thousands once JAX and a model are
    loaded) with the interpreter lock held; ``serve`` freezes them first (``server.settle``)."""
    import uvicorn
    seen, apps, create = {}, [], server.create_app

    def run(self, sockets=None):
        seen["frozen"] = gc.get_freeze_count()
        for sock in sockets:
            sock.close()
    monkeypatch.setattr(uvicorn.Server, "run", run)
    monkeypatch.setattr(server, "create_app", lambda *a, **k: apps.append(create(*a, **k)) or apps[-1])
    try:
        assert server.serve(trained_gpt[0], None, port=0, slots=1) == 0
    finally:
        gc.unfreeze()
        for app in apps:
            app.state.server.engine.close()
    assert seen["frozen"] > 10_000, seen


def test_the_engine_wakes_the_event_loop_once_for_the_events_it_posts_together():
    import asyncio

    class Loop:  # records wake-ups instead of running them
        def __init__(self):
            self.calls = []

        def call_soon_threadsafe(self, fn):
            self.calls.append(fn)
    loop, first, second = Loop(), asyncio.Queue(), asyncio.Queue()
    mail = server._Mailbox(loop)
    for queue, item in [(first, 1), (second, 2), (first, 3)]:
        mail.post(queue, item)
    assert len(loop.calls) == 1
    loop.calls.pop()()
    assert [first.get_nowait(), first.get_nowait(), second.get_nowait()] == [1, 3, 2]
    mail.post(first, 4)  # delivered: the next event wakes the loop again
    assert len(loop.calls) == 1


def test_waiting_deltas_of_one_completion_go_out_as_one_piece_in_order():
    import asyncio

    async def drain():
        events = asyncio.Queue()
        for item in [("delta", (0, "a")), ("delta", (0, "b")), ("delta", (1, "c")), ("delta", (0, "d")),
                     ("done", "results")]:
            events.put_nowait(item)
        out = []
        async for item in server._merged(events):
            out.append(item)
            if item[0] == "done":
                return out
    assert asyncio.run(drain()) == [("delta", (0, "ab")), ("delta", (1, "c")), ("delta", (0, "d")),
                                    ("done", "results")]
