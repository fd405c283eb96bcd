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
