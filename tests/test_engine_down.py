"""A server whose engine thread dies answers every request (no client waits forever) and says so."""
import threading

from fastapi.testclient import TestClient

from nety_jax.serving.server import create_app
from test_server_robustness import TEXT, ScriptBackend


class Fatal(BaseException):
    """What the engine's per-batch guard does not catch (as a failure in its own error handling)."""


class DyingBackend(ScriptBackend):
    def __init__(self, tokenizer, release: threading.Event):
        super().__init__(tokenizer)
        self.release, self.started = release, threading.Event()

    def run(self, batch, rows, on_chunk, chunk):
        self.started.set()
        self.release.wait(30)  # hold the first batch until a second request waits in the queue
        raise Fatal("the engine thread's own failure")


def test_a_dead_engine_answers_running_waiting_and_later_requests():
    from nety_jax.data.tokenizer import WordTokenizer
    release = threading.Event()
    backend = DyingBackend(WordTokenizer.build(TEXT, 400), release)
    app = create_app(backend, "tiny", max_batch=1,
                     window_ms=0.0, batching="dynamic")
    body = {"prompt": "le chat", "max_tokens": 2}
    with TestClient(app) as c:
        answers = {}

        def ask(key, stream=False):
            answers[key] = c.post("/v1/completions", json={**body, "stream": stream})

        running = threading.Thread(target=ask, args=("running",), daemon=True)
        running.start()
        assert backend.started.wait(30)  # the first request runs in the engine
        waiting = threading.Thread(target=ask, args=("waiting",), daemon=True)
        waiting.start()
        engine = app.state.server.engine
        while engine.jobs.qsize() == 0:  # the second waits in the queue
            threading.Event().wait(0.01)
        release.set()
        running.join(10), waiting.join(10)
        assert not running.is_alive() and not waiting.is_alive(), "a request still waits on a dead engine"
        for key in ("running", "waiting"):
            assert answers[key].status_code == 500, answers[key].text
            assert "the engine stopped (Fatal: the engine thread's own failure)" in answers[key].json()["error"]["message"]
        later = c.post("/v1/completions", json=body)
        assert later.status_code == 503 and "restart the server" in later.json()["error"]["message"]
        health = c.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "failed"
