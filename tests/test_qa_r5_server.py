"""QA round 5: what the server says about itself and about a body that is not JSON."""
import pytest
from fastapi.testclient import TestClient

from nety_jax.serving.server import batching_line, create_app
from test_server_robustness import TEXT, ScriptBackend


@pytest.fixture(scope="module")
def tokenizer():
    from nety_jax.data.tokenizer import WordTokenizer
    return WordTokenizer.build(TEXT, 400)


def test_the_start_up_line_gives_a_fixed_batch_exports_own_maximum(tokenizer):
    """`serve --exported` of an export compiled for batches of 2 said "max batch 32" (the flag)
    while it refused a third row: the line now reads the engine's bound."""
    backend = ScriptBackend(tokenizer)
    backend.fixed_batch = 2
    app = create_app(backend, "tiny", max_batch=32, window_ms=0.0)
    with TestClient(app):
        engine = app.state.server.engine
        assert engine.max_batch == 2
        assert "max batch 2," in batching_line(engine, 32, 8, 0.0)


def test_a_body_sent_as_a_form_is_told_to_be_json(tokenizer):
    """`curl -d '{...}'` sends a form content type: FastAPI then does not read the body as JSON, and
    the answer was "body: Input should be a valid dictionary". It now names the header to send."""
    with TestClient(create_app(ScriptBackend(tokenizer), "tiny", window_ms=0.0)) as c:
        r = c.post("/v1/completions", content=b'{"prompt": "le chat", "max_tokens": 2}',
                   headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 400, r.text
        message = r.json()["error"]["message"]
        assert "Content-Type: application/json" in message and "x-www-form-urlencoded" in message, message
        ok = c.post("/v1/completions", json={"prompt": "le chat", "max_tokens": 2})
        assert ok.status_code == 200, ok.text
        bad = c.post("/v1/completions", content=b'{"prompt": ', headers={"content-type": "application/json"})
        assert bad.status_code == 400 and "malformed JSON" in bad.json()["error"]["message"]
