"""The server under load (serving/server.py, serving/continuous.py): what keeps its tail latency
and its CPU per token down."""
import gc

from nety_jax.serving import server


def test_serve_moves_the_start_up_heap_out_of_the_collectors_sight_before_listening(trained_gpt, monkeypatch):
    """A full collection rescans every object alive (hundreds of thousands once JAX and a model are
    loaded) with the interpreter lock held; ``serve`` freezes them first (``server.settle``)."""
    import uvicorn
    from nety_jax.serving.continuous import ContinuousEngine
    seen, apps, create = {}, [], server.create_app

    def run(self, sockets=None):
        seen["frozen"] = gc.get_freeze_count()
        for sock in sockets:
            sock.close()
    monkeypatch.setattr(uvicorn.Server, "run", run)
    monkeypatch.setattr(server, "create_app", lambda *a, **k: apps.append(create(*a, **k)) or apps[-1])
    # the warm-up itself: tests/test_continuous_warmup.py; here only that serve runs it before listening
    monkeypatch.setattr(ContinuousEngine, "warm_up", lambda self: seen.setdefault("warmed", "frozen" not in seen))
    try:
        assert server.serve(trained_gpt[0], None, port=0, slots=1) == 0
    finally:
        gc.unfreeze()
        for app in apps:
            app.state.server.engine.close()
    assert seen["frozen"] > 10_000, seen
    assert seen["warmed"] is True, seen


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
        async for ready in server._merged(events):
            return ready
    assert asyncio.run(drain()) == [("delta", (0, "ab")), ("delta", (1, "c")), ("delta", (0, "d")),
                                    ("done", "results")]


def test_a_streams_waiting_events_go_out_in_one_write():
    """The last text, the finish reason, the usage and [DONE], waiting together, are one write
    (one send through the HTTP stack) instead of four."""
    import asyncio
    import json

    from nety_jax.serving.engine import Job, RowResult

    async def writes():
        events = asyncio.Queue()
        for item in [("delta", (0, "Bon")), ("delta", (0, "jour")), ("done", [RowResult("Bonjour", 2, "length")])]:
            events.put_nowait(item)
        job = Job([object()], lambda kind, payload: None, True)
        stream = server.Server._stream(server.Server.__new__(server.Server), job, events, "text_completion",
                                       {"id": "cmpl-1", "created": 0, "model": "m"}, 3)
        return [piece async for piece in stream], job
    pieces, job = asyncio.run(writes())
    assert len(pieces) == 1 and job.cancelled.is_set()
    events = pieces[0].split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    bodies = [json.loads(e[len("data: "):]) for e in events[:-2]]
    assert [b["choices"][0]["text"] for b in bodies[:2]] == ["Bonjour", ""]
    assert bodies[1]["choices"][0]["finish_reason"] == "length"
    assert bodies[2]["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
