"""Per-row runtime sampling settings, the HTTP server, and int8 weights."""
import concurrent.futures as futures
import re
import socket
import subprocess
import sys
import threading
import time

import httpx
import jax
import numpy as np
import pytest

from nety_jax.serving.pretrained import load_pretrained
from conftest import ROOT


def test_rows_with_their_own_settings_equal_rows_alone_and_never_recompile(trained_run):
    model = load_pretrained(trained_run)
    prompts = ["Bonjour !", "J'aime nager.", "Il pleut encore.", "Combien font 2 plus 3 ?"]
    settings = dict(temperature=[0.0, 0.7, 1.2, 0.9], top_k=[0, 5, 0, 200], top_p=[1.0, 0.9, 0.6, 0.95],
                    max_new_tokens=[12, 6, 10, 3])
    seeds = [11, 12, 13, 14]
    together = model.generate_ids(prompts, seed=seeds, **settings)["tokens"]
    for i, p in enumerate(prompts):
        alone = model.generate_ids([p], seed=[seeds[i]], **{k: [v[i]] for k, v in settings.items()})["tokens"]
        n = settings["max_new_tokens"][i]  # the compiled maximum differs; the row's own tokens do not
        np.testing.assert_array_equal(alone[0][:n], together[i][:n])
        assert (alone[0][n:] == 0).all() and (together[i][n:] == 0).all()
    assert (together[3][3:] == 0).all()  # its own max_new_tokens
    model.generate(prompts, temperature=0.5, seed=0, max_new_tokens=7)  # compiles this batch shape once
    model.generate(prompts, temperature=0.0, max_new_tokens=7)  # and once for greedy rows only (no sampler)
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, *a, **k: compiles.append(event) if event == "/jax/core/compile/backend_compile_duration" else None)
    for temperature, top_k, top_p, seed in ((0.3, 10, 0.5, 1), (1.5, 0, 1.0, 2), (0.0, 64, 0.8, 3), (0.8, 500, 0.9, 4)):
        model.generate(prompts, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, max_new_tokens=7)
    assert compiles == [], compiles


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(trained_run):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "nety_jax.cli", "serve", "--checkpoint", trained_run,
                             "--port", str(port), "--max-batch", "8", "--queue-size", "16",
                             "--batch-window-ms", "30", "--no-warm-up"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError(proc.stdout.read())
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def _metric(url, name):
    text = httpx.get(f"{url}/metrics").text
    return sum(float(m) for m in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M))


def test_concurrent_clients_are_batched(server):
    before = (_metric(server, "nety_batch_size_sum"), _metric(server, "nety_batch_size_count"))
    body = lambda i: {"prompt": f"Bonjour {i} !", "max_tokens": 6, "temperature": 0.8, "seed": i}
    with futures.ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda i: httpx.post(f"{server}/v1/completions", json=body(i), timeout=120), range(16)))
    assert all(r.status_code == 200 for r in replies), [r.text for r in replies if r.status_code != 200]
    assert all(r.json()["choices"][0]["finish_reason"] in ("stop", "length") for r in replies)
    rows = _metric(server, "nety_batch_size_sum") - before[0]
    batches = _metric(server, "nety_batch_size_count") - before[1]
    assert rows == 16 and rows / batches > 1, (rows, batches)
    alone = httpx.post(f"{server}/v1/completions", json=body(3), timeout=120).json()
    assert alone["choices"][0]["text"] == replies[3].json()["choices"][0]["text"]  # its seed, not its batch


def test_openai_client_and_streaming_equals_non_streaming(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused")
    name = client.models.list().data[0].id
    assert client.models.retrieve(name).id == name
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.models.retrieve("gpt-4")
    chat = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Salut !"}],
                                          max_tokens=8, temperature=0.9, seed=5, n=2)
    assert len(chat.choices) == 2 and chat.usage.completion_tokens > 0
    streamed = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Salut !"}],
                                              max_tokens=8, temperature=0.9, seed=5, n=2, stream=True)
    texts = ["", ""]
    for chunk in streamed:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == [c.message.content for c in chat.choices]
    ask = dict(model=name, messages=[{"role": "user", "content": "Salut !"}], temperature=0.9, seed=5)
    limited = client.chat.completions.create(max_tokens=3, **ask)
    newer = client.chat.completions.create(max_completion_tokens=3, **ask)  # OpenAI's newer name
    assert limited.choices[0].finish_reason == "length" and limited.usage.completion_tokens == 3
    assert newer.choices[0].message.content == limited.choices[0].message.content
    assert newer.usage.completion_tokens == 3
    parts = dict(ask, messages=[{"role": "user", "content": [{"type": "text", "text": "Salut !"}]}])
    off = dict(logprobs=False, presence_penalty=0, frequency_penalty=0.0)  # what clients send by default
    assert client.chat.completions.create(max_tokens=3, **parts, **off).choices[0].message.content == \
        limited.choices[0].message.content
    with pytest.raises(openai.BadRequestError, match="logprobs: not supported by this server"):
        client.chat.completions.create(max_tokens=3, logprobs=True, **ask)
    chunks = list(client.chat.completions.create(max_tokens=3, stream=True, stream_options={"include_usage": True},
                                                 **ask))
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == limited.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])
    done = client.completions.create(model=name, prompt="Bonjour !", max_tokens=10, seed=2, temperature=1.0,
                                     extra_body={"top_k": 20})
    pieces = "".join(c.choices[0].text for c in client.completions.create(
        model=name, prompt="Bonjour !", max_tokens=10, seed=2, temperature=1.0, extra_body={"top_k": 20},
        stream=True))
    assert pieces == done.choices[0].text


@pytest.mark.parametrize("body, status, param", [
    (b"{not json", 400, None),
    ({"prompt": 3}, 400, "prompt"),
    ({"prompt": "  "}, 400, "prompt"),
    ({"prompt": "x", "temperature": "hot"}, 400, "temperature"),
    ({"prompt": "x", "temperature": -1}, 400, "temperature"),
    ({"prompt": "x", "top_p": 0}, 400, "top_p"),
    ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": 100000}, 400, "max_tokens"),
    ({"prompt": "mot " * 3000}, 400, "prompt"),
    ({"prompt": "x", "n": 500}, 400, "n"),
    ({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 100000}, 400, "max_completion_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0}, 400, "max_completion_tokens"),
    ({"prompt": "x", "stream_options": {"include_usage": True}}, 400, "stream_options"),
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, 400, "messages.0.role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, 400,
     "messages.0.content"),
    ({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}}, 400,
     "response_format"),
    ({"prompt": "x", "echo": True}, 400, "echo"),  # not implemented: refused, not ignored
    ({"prompt": "x", "logprobs": 0}, 400, "logprobs"),  # 0 still asks for the chosen tokens' log-probabilities
])
def test_bad_requests_get_a_4xx_naming_the_field(server, body, status, param):
    path = "/v1/chat/completions" if isinstance(body, dict) and "messages" in body else "/v1/completions"
    kw = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(f"{server}{path}", timeout=60, **kw)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["message"], error


def test_unknown_paths_and_methods_get_openai_style_errors(server):
    for r, status in ((httpx.get(f"{server}/v1/nope"), 404), (httpx.get(f"{server}/v1/completions"), 405)):
        assert r.status_code == status and r.json()["error"]["message"].startswith("GET /v1/"), r.text


def test_a_flood_past_the_queue_gets_429_and_the_server_still_answers(server):
    body = {"prompt": "Bonjour !", "max_tokens": 12}
    n = 96  # 4x what the server holds (8 in a batch + 16 queued), sent at the same moment
    clients = [httpx.Client(base_url=server, timeout=120) for _ in range(n)]
    for c in clients:  # connections open before the flood, so the requests really arrive together
        c.get("/health")
    start = threading.Barrier(n)

    def send(c):
        start.wait()
        return c.post("/v1/completions", json=body).status_code
    with futures.ThreadPoolExecutor(n) as pool:
        codes = list(pool.map(send, clients))
    for c in clients:
        c.close()
    assert 429 in codes and 200 in codes and set(codes) <= {200, 429}
    assert httpx.post(f"{server}/v1/completions", json=body, timeout=60).status_code == 200
    assert httpx.get(f"{server}/health").json()["status"] == "ok"


def test_int8_quantized_run_generates_and_agrees_with_float32(trained_gpt, tmp_path):
    from nety_jax.cli import main
    workdir, _ = trained_gpt
    out = tmp_path / "int8"
    assert main(["quantize", "--checkpoint", workdir, "--out", str(out)]) == 0
    f32, q8 = load_pretrained(workdir), load_pretrained(str(out))
    kernel = q8.variables["params"]["layers_0"]["ffn"]["linear1"]
    assert kernel["kernel"].dtype == np.int8 and kernel["scale"].dtype == np.float32
    prompts = ["Le chat mange", "Le lundi, Marie", "Pour préparer une omelette, il faut", "Souvent,"]
    a = f32.generate(prompts, temperature=0.0, max_new_tokens=8)
    b = q8.generate(prompts, temperature=0.0, max_new_tokens=8)
    assert sum(x == y for x, y in zip(a, b)) >= 3, (a, b)
    assert main(["quantize", "--checkpoint", workdir, "--out", str(out)]) == 2  # never clobbers


def test_serve_refuses_a_taken_or_invalid_port_before_loading_the_model(capsys):
    """A one-line error at once (no model is loaded: the checkpoint does not even exist)."""
    from nety_jax.cli import main
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--checkpoint", "no/such/run", "--port", str(port)]) == 2
        assert f"--port={port}: cannot listen on 127.0.0.1" in capsys.readouterr().err
    assert main(["serve", "--checkpoint", "no/such/run", "--port", "99999"]) == 2
    assert "--port=99999 must be between 0 and 65535" in capsys.readouterr().err
    assert main(["serve", "--checkpoint", "no/such/run", "--port", "0"]) == 2  # binds, then the run is missing
    assert "no/such/run: no such run directory" in capsys.readouterr().err
