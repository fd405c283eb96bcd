"""QA round 5: requests whose clients went away while they waited must not keep places in the
bounded queue (live requests were refused with 429 behind them) nor stay counted as live."""
import threading
import time

import pytest

from nety_jax.serving.engine import Engine, Job, Row
from test_server_robustness import TEXT, ScriptBackend


class HeldBackend(ScriptBackend):
    """Runs a batch only once ``go`` is set: the engine is busy while the queue fills."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        self.go, self.started = threading.Event(), threading.Event()

    def run(self, batch, rows, on_chunk, chunk):
        self.started.set()
        self.go.wait(30)
        return super().run(batch, rows, on_chunk, chunk)


@pytest.fixture(scope="module")
def tokenizer():
    from nety_jax.data.tokenizer import WordTokenizer
    return WordTokenizer.build(TEXT, 400)


def _job(tokenizer, answers):
    return Job([Row(tokenizer.encode("le chat"), 0.0, 0, 1.0, 2, 0)], lambda kind, payload: answers.append(kind))


def test_cancelled_waiting_requests_give_their_places_to_live_ones(tokenizer):
    backend = HeldBackend(tokenizer)
    engine = Engine(backend, max_batch=1, window_ms=0.0, queue_size=2)
    try:
        answers = []
        engine.submit(_job(tokenizer, answers))  # taken by the engine, which holds it
        assert backend.started.wait(30)
        gone = [_job(tokenizer, []), _job(tokenizer, [])]
        for job in gone:
            engine.submit(job)  # the queue is full now
        for job in gone:
            job.cancelled.set()  # their clients disconnect while they wait
        assert engine.waiting() == 0
        live = _job(tokenizer, answers)
        engine.submit(live)  # was QueueFull (429)
        assert engine.waiting() == 1
        backend.go.set()
        deadline = time.monotonic() + 30
        while answers.count("done") < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert answers.count("done") == 2
        assert not engine._live  # nothing answered or dropped stays counted as live
    finally:
        backend.go.set()
        engine.close()
