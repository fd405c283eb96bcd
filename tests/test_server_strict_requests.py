"""QA round 3: the server's request types are strict, as OpenAI's API is."""
import pytest
from fastapi.testclient import TestClient

from nety_jax.serving.server import create_app
from test_server_robustness import TEXT, ScriptBackend

CHAT = {"messages": [{"role": "user", "content": "le chat"}]}


@pytest.fixture(scope="module")
def client():
    from nety_jax.data.tokenizer import WordTokenizer
    with TestClient(create_app(ScriptBackend(WordTokenizer.build(TEXT, 400)), "tiny", window_ms=0.0)) as c:
        yield c


@pytest.mark.parametrize("field,value", [
    ("seed", "3"), ("max_tokens", 5.0), ("max_tokens", "5"), ("stream", "yes"), ("stream", 1),
    ("n", True), ("temperature", "0.5"), ("temperature", True), ("top_k", 2.0), ("top_p", "1"),
    ("stream_options", {"include_usage": "yes"})])
def test_a_field_of_the_wrong_type_is_a_400_naming_it(client, field, value):
    """pydantic's lax mode coerced them: "stream": "yes" streamed, "temperature": true sampled at 1.0,
    "seed": "3" was seed 3, "max_tokens": 5.0 five tokens; OpenAI's API answers each with a 400."""
    extra = {"stream": True} if field == "stream_options" else {}
    for path, body in (("/v1/completions", {"prompt": "le chat"}), ("/v1/chat/completions", CHAT)):
        r = client.post(path, json={**body, "max_tokens": 2, **extra, field: value})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"].startswith(field), error


def test_right_types_still_pass(client):
    """An integer is a number (temperature 1), JSON's booleans and integers are what they say."""
    for path, body in (("/v1/completions", {"prompt": "le chat"}), ("/v1/chat/completions", CHAT)):
        r = client.post(path, json={**body, "max_tokens": 2, "temperature": 1, "top_p": 1, "seed": 3,
                                    "n": 2, "stream": False, "top_k": 0, "stop": ["x"], "user": "u"})
        assert r.status_code == 200 and len(r.json()["choices"]) == 2, r.text
    r = client.post("/v1/chat/completions", json={**CHAT, "max_completion_tokens": 2.0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_completion_tokens"
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": 5}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages.0.content"


def test_a_half_sent_request_does_not_keep_the_server_from_stopping():
    """SIGTERM (uvicorn's should_exit) waited for every connection to end: a client that sent half
    a request's body held the server up for as long as it kept its socket (forever). Now the
    requests still held after the grace period are cancelled and the server stops."""
    import socket
    import threading
    import time

    from nety_jax.data.tokenizer import WordTokenizer
    from nety_jax.serving.server import http_server, listen_socket
    app = create_app(ScriptBackend(WordTokenizer.build(TEXT, 400)), "tiny", window_ms=0.0)
    server, sock = http_server(app, grace_s=0.5), listen_socket("127.0.0.1", 0)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    client = socket.create_connection(sock.getsockname())
    try:
        client.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: 100\r\n\r\n{\"prompt\":")
        time.sleep(0.3)  # the request is being read
        server.should_exit = True
        thread.join(timeout=10)
        assert not thread.is_alive(), "the server waited for a client that never finishes its request"
    finally:
        client.close()
        thread.join(timeout=10)


def test_a_huge_body_is_a_413_and_a_long_conversation_a_400(client):
    """Each message was bounded, their number and the body were not: 3,000 messages (240 MB) were
    read, parsed and tokenized on the event loop for about a minute (every other request waited)
    and took gigabytes. The body is refused by its length before it is read (413), and so is one
    sent in chunks once it passes the limit; a conversation is bounded as a prompt is (400)."""
    import json

    from nety_jax.serving.server import MAX_BODY_BYTES
    big = json.dumps({**CHAT, "max_tokens": 2, "user": "x" * MAX_BODY_BYTES}).encode()
    for content in (big, (big[i: i + (1 << 20)] for i in range(0, len(big), 1 << 20))):  # sized, chunked
        r = client.post("/v1/chat/completions", content=content, headers={"content-type": "application/json"})
        assert r.status_code == 413, r.text
        assert f"this server takes at most {MAX_BODY_BYTES:,}" in r.json()["error"]["message"]
    long = [{"role": "user", "content": "le chat " * 10_000}] * 2  # each message within its bound
    r = client.post("/v1/chat/completions", json={"messages": long, "max_tokens": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages", r.text
    assert "the conversation is 160,001 characters; at most 100,000" in r.json()["error"]["message"]
    assert client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 2}).status_code == 200
