"""Continuous batching (serving/continuous.py): rows give the tokens they give alone, freed slots
are reused (finished, cancelled, disconnected), max_tokens is bounded by the model's room."""
import dataclasses
import socket
import threading
import time

import httpx
import pytest

from nety_jax.serving.continuous import ContinuousEngine
from nety_jax.serving.engine import Job, PretrainedBackend, Row
from nety_jax.serving.pretrained import load_pretrained

PROMPTS = ["Bonjour !", "Il pleut.", "J'aime nager.", "Le soir,", "Le chat"]  # one prompt bucket: few compiles
# (temperature, top_k, top_p, max_new_tokens, seed): greedy and seeded rows, lengths that free slots early
SETTINGS = [(0.0, 0, 1.0, 9, 1), (0.9, 0, 1.0, 12, 2), (1.2, 5, 0.9, 4, 3), (0.7, 0, 0.8, 11, 4), (0.0, 0, 1.0, 6, 5)]


def _submit(engine, rows, on_delta=None):
    """(job, event, results): ``results`` holds the delivered payload once ``event`` is set."""
    results, finished = [], threading.Event()
    job = None

    def deliver(kind, payload):
        if kind == "delta":
            on_delta and on_delta(job, payload)
            return
        results.append((kind, payload))
        finished.set()
    job = Job(rows, deliver, stream=on_delta is not None)
    engine.submit(job)
    return job, finished, results


@pytest.fixture(scope="module", params=["hybrid", "gpt", "rnn_lm"])
def model(request, trained_run, trained_gpt, trained_rnn_lm):
    return load_pretrained({"hybrid": trained_run, "gpt": trained_gpt[0], "rnn_lm": trained_rnn_lm[0]}[request.param])


def test_rows_give_the_tokens_they_give_alone_and_reuse_freed_slots(model):
    """Five requests through two slots, all waiting at the start: rows join as others finish, and
    each row's reply equals ``generate`` on that row alone (greedy and seeded sampling). The
    waiting rows are prefilled ahead and a chunk takes them as its queue: they go into the slots
    that free INSIDE it (the hybrid's chunk reads a narrowed memory), so no program inserts rows
    between chunks."""
    engine, gate = _gated_engine(PretrainedBackend(model), slots=2, chunk=3)
    inserts, aheads, insert, apart = [], [], engine.runner.insert, engine.runner.prefill_apart
    engine.runner.insert = lambda *a, **k: (inserts.append(1), insert(*a, **k))[1]
    engine.runner.prefill_apart = lambda *a, **k: (aheads.append(1), apart(*a, **k))[1]
    rows = [Row(model.model.prompts.ids(model.tokenizer, p, model.config.data), *s) for p, s in zip(PROMPTS, SETTINGS)]
    submitted = [_submit(engine, [r], on_delta=(lambda *a: None) if i % 2 else None) for i, r in enumerate(rows)]
    gate.set()
    for _, finished, _ in submitted:
        assert finished.wait(120)
    assert engine.seats == [None, None]
    engine.close()  # before this thread compiles its own programs: no compile beside the engine's threads
    assert aheads and not inserts, (aheads, inserts)  # the old engine inserted them between chunks
    for (_, finished, results), (t, k, p, n, seed), prompt in zip(submitted, SETTINGS, PROMPTS):
        kind, (got,) = results[0]
        alone = model.generate_ids([prompt], seed=[seed], temperature=[t], top_k=[k], top_p=[p], max_new_tokens=[n])
        length = int(alone["lengths"][0])
        ids = [int(x) for x in alone["tokens"][0][:length]]
        ended = ids[-1:] == [2]  # <eos>
        assert (got.text, got.tokens) == (model.tokenizer.decode(ids[: length - ended]), length), (prompt, ids)
        assert got.finish_reason == ("stop" if ended else "length")


def test_a_cancelled_row_frees_its_slot_for_the_next_request(trained_gpt):
    pre = load_pretrained(trained_gpt[0])
    backend = PretrainedBackend(pre)
    backend.spec = dataclasses.replace(backend.spec, min_new_tokens=1000)  # no <eos>: only the cancellation ends it
    engine = ContinuousEngine(backend, slots=1, chunk=1)
    ids = pre.model.prompts.ids(pre.tokenizer, "Le chat", pre.config.data)
    long = Row(ids, 0.8, 0, 1.0, 50, 7)
    job, finished, results = _submit(engine, [long], on_delta=lambda job, _: job.cancelled.set())
    assert finished.wait(120)
    (kind, (row,)), = results
    assert row.finish_reason == "cancelled" and row.tokens < 50, row
    _, finished, results = _submit(engine, [Row(ids, 0.0, 0, 1.0, 5, 0)])
    assert finished.wait(60) and results[0][1][0].tokens == 5
    engine.close()


@pytest.fixture(scope="module")
def live_server(trained_gpt):
    """An in-process uvicorn over a one-slot continuous engine whose rows end at their length only."""
    from nety_jax.serving.server import create_app, http_server
    backend = PretrainedBackend(load_pretrained(trained_gpt[0]))
    backend.spec = dataclasses.replace(backend.spec, min_new_tokens=1000)  # no <eos>: rows end at their length
    app = create_app(backend, "tiny", slots=1, chunk=1)
    runner, step = app.state.server.engine.runner, app.state.server.engine.runner.step
    # a 60-token row takes at least 3 s: however loaded the machine, a hang-up is seen long before
    runner.step = lambda *a, **k: (time.sleep(0.05), step(*a, **k))[1]
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = http_server(app)  # as `nety-jax serve`: one write per turn of the loop, streams' headers with their first text
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    while not server.started:
        time.sleep(0.05)
    yield url, app
    server.should_exit = True
    thread.join(10)


def _generated(app) -> float:
    text = app.state.server.metrics.text().decode()
    return float(text.split("\nnety_generated_tokens_total ")[1].split()[0])


def test_a_client_that_disconnects_mid_stream_frees_its_slot(live_server):
    url, app = live_server
    before = _generated(app)
    body = {"prompt": "Le chat", "max_tokens": 60, "temperature": 0.8, "seed": 1, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        next(line for line in r.iter_lines() if line.startswith("data: {"))  # one piece, then hang up
    r = httpx.post(f"{url}/v1/completions", json={"prompt": "Le chat", "max_tokens": 2}, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
    assert _generated(app) - before < 60 + 2  # the first row stopped when its client left
    assert app.state.server.engine.seats == [None]


def test_max_tokens_beyond_the_runs_default_is_bounded_by_the_models_room(live_server):
    """gpt_tiny: model.max_len=64, decode.max_new_tokens below it; a prompt of p tokens leaves
    64 - p + 1 new tokens, and the server started without --max-tokens."""
    url, app = live_server
    pre = app.state.server.backend.model
    p = len(pre.model.prompts.ids(pre.tokenizer, "Le chat", pre.config.data))
    room = pre.model.cfg.max_len - p + 1
    assert room > pre.config.decode.max_new_tokens
    ok = httpx.post(f"{url}/v1/completions", json={"prompt": "Le chat", "max_tokens": room}, timeout=120)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == room, ok.text
    default = httpx.post(f"{url}/v1/completions", json={"prompt": "Le chat"}, timeout=60).json()
    assert default["usage"]["completion_tokens"] == pre.config.decode.max_new_tokens
    over = httpx.post(f"{url}/v1/completions", json={"prompt": "Le chat", "max_tokens": room + 1}, timeout=60)
    assert over.status_code == 400 and over.json()["error"]["param"] == "max_tokens", over.text
    assert f"room for {room}" in over.json()["error"]["message"]


def _gated_engine(backend, **kwargs):
    """(engine, gate): the engine's thread starts working once ``gate`` is set, so that requests
    submitted before are all waiting when it takes its first."""
    gate = threading.Event()

    class Gated(ContinuousEngine):
        def _work(self):
            gate.wait(60)
            super()._work()
    return Gated(backend, **kwargs), gate


def _prefill_sizes(engine, threads: list = None) -> list:
    """A list that records the rows of each prefill program the engine runs (and ``threads``
    the name of the thread that ran it)."""
    sizes, inputs = [], engine.runner._inputs  # every prefill program's inputs, made once

    def recorded(rows, *a, **k):
        sizes.append(len(rows))
        threads is None or threads.append(threading.current_thread().name)
        return inputs(rows, *a, **k)
    engine.runner._inputs = recorded
    return sizes


def test_rows_that_finish_while_requests_wait_are_refilled_by_one_prefill(trained_gpt):
    """Two slots full, two requests waiting: the two waiting requests are prefilled together, in
    the prefill thread while the engine's thread runs the chunk, which runs on until both rows
    have finished (not just the first) and they take the freed slots; every reply is the one the
    request gets alone (greedy and seeded rows)."""
    pre = load_pretrained(trained_gpt[0])
    backend = PretrainedBackend(pre)
    backend.spec = dataclasses.replace(backend.spec, min_new_tokens=1000)  # no <eos>: rows end at their length
    ids = pre.model.prompts.ids(pre.tokenizer, "Le chat", pre.config.data)
    rows = [Row(ids, 0.0, 0, 1.0, 3, 0), Row(ids, 0.9, 0, 1.0, 9, 1), Row(ids, 0.8, 5, 0.9, 4, 2),
            Row(ids, 0.0, 0, 1.0, 5, 3)]
    engine, gate = _gated_engine(backend, slots=2, chunk=3, admit_batch=2)
    threads = []
    sizes = _prefill_sizes(engine, threads)
    submitted = [_submit(engine, [r]) for r in rows]
    gate.set()
    together = []
    for _, finished, results in submitted:
        assert finished.wait(120)
        together.append(results[0][1][0])
    engine.close()
    assert sizes == [2, 2], sizes  # one row each: [2, 1, 1]
    assert threads == ["nety-engine", threads[1]] and threads[1].startswith("nety-prefill"), threads
    alone = ContinuousEngine(backend, slots=1, chunk=3)
    for row, got in zip(rows, together):
        _, finished, results = _submit(alone, [row])
        assert finished.wait(120)
        assert results[0][1][0] == got and got.tokens == row.max_new_tokens
    alone.close()


def test_a_streams_first_text_comes_from_its_prefill_without_a_one_token_chunk(trained_gpt):
    """The first token is read from the admission itself (while the first chunk runs), so no
    chunk of one token is run for it; the streamed pieces join to the non-streamed text."""
    pre = load_pretrained(trained_gpt[0])
    backend = PretrainedBackend(pre)
    backend.spec = dataclasses.replace(backend.spec, min_new_tokens=1000)
    engine = ContinuousEngine(backend, slots=2, chunk=4)
    # as where programs run while the host goes on (async dispatch on, a GPU): another test in this
    # process may have turned the dispatch setting off (`nety-jax`'s main), which the engine reads
    engine.overlap = True
    chunks, step = [], engine.runner.step
    engine.runner.step = lambda stop, start, steps, *a, **k: (chunks.append(int(steps)),
                                                              step(stop, start, steps, *a, **k))[1]
    ids = pre.model.prompts.ids(pre.tokenizer, "Le chat", pre.config.data)

    def first_text(seed):  # a row's first token is the same whatever its length
        _, finished, results = _submit(engine, [Row(ids, 0.8, 0, 1.0, 1, seed)])
        assert finished.wait(120)
        return results[0][1][0].text
    seed = next(s for s in range(20) if first_text(s).strip("\ufffd"))  # a first token with text of its own
    row, chunks[:] = Row(ids, 0.8, 0, 1.0, 10, seed), []
    pieces, first_after = [], []
    _, finished, results = _submit(engine, [row], on_delta=lambda job, delta: (
        first_after.append(len(chunks)) if not pieces else None, pieces.append(delta[1])))
    assert finished.wait(120)
    streamed = results[0][1][0]
    _, finished, results = _submit(engine, [row])
    assert finished.wait(120)
    engine.close()
    assert 1 not in chunks, chunks  # the old engine ran a 1-token chunk after admitting a stream
    assert first_after == [1]  # the first text went out while the first chunk ran
    assert "".join(pieces) == streamed.text == results[0][1][0].text and streamed.tokens == 10


def test_where_programs_run_in_the_engines_thread_a_streams_first_text_goes_out_before_the_chunk(trained_gpt):
    """``nety-jax serve`` on a CPU runs each program in the calling thread (async dispatch off:
    ``runtime.keep_host_memory``): a dispatched chunk has run when the call returns, so the
    engine hands out the first tokens and text before starting the chunk, not after it."""
    pre = load_pretrained(trained_gpt[0])
    backend = PretrainedBackend(pre)
    backend.spec = dataclasses.replace(backend.spec, min_new_tokens=1000)
    engine = ContinuousEngine(backend, slots=2, chunk=4)
    engine.overlap = False  # as with async dispatch off (fixed when JAX starts: not switchable in a test)
    chunks, step = [], engine.runner.step
    engine.runner.step = lambda *a, **k: (chunks.append(1), step(*a, **k))[1]
    ids = pre.model.prompts.ids(pre.tokenizer, "Le chat", pre.config.data)

    def first_text(seed):
        _, finished, results = _submit(engine, [Row(ids, 0.8, 0, 1.0, 1, seed)])
        assert finished.wait(120)
        return results[0][1][0].text
    seed = next(s for s in range(20) if first_text(s).strip("\ufffd"))
    chunks[:] = []
    pieces, first_after = [], []
    _, finished, results = _submit(engine, [Row(ids, 0.8, 0, 1.0, 10, seed)], on_delta=lambda job, delta: (
        first_after.append(len(chunks)) if not pieces else None, pieces.append(delta[1])))
    assert finished.wait(120)
    engine.close()
    assert first_after == [0], first_after  # after the first chunk (or two) on the old engine
    assert "".join(pieces) == results[0][1][0].text
