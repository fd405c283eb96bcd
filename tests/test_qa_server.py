"""QA: the server answers only for the model it serves (as OpenAI and vLLM do)."""
import pytest
from fastapi.testclient import TestClient

from nety_jax.serving.server import create_app
from test_server_robustness import TEXT, ScriptBackend


@pytest.fixture(scope="module")
def tokenizer():
    from nety_jax.data.tokenizer import WordTokenizer
    return WordTokenizer.build(TEXT, 400)


def test_a_request_for_another_model_is_a_404_naming_it(tokenizer):
    """`"model": "gpt-4"` was answered by whatever this server holds, with a 200."""
    with TestClient(create_app(ScriptBackend(tokenizer), "tiny", window_ms=0.0)) as c:
        for path, body in (("/v1/completions", {"prompt": "le chat"}),
                           ("/v1/chat/completions", {"messages": [{"role": "user", "content": "le chat"}]})):
            r = c.post(path, json={**body, "model": "gpt-4", "max_tokens": 2})
            assert r.status_code == 404, r.text
            error = r.json()["error"]
            assert error["param"] == "model" and "'gpt-4' does not exist; this server has 'tiny'" in error["message"]
            assert c.post(path, json={**body, "model": "tiny", "max_tokens": 2}).status_code == 200
            assert c.post(path, json={**body, "max_tokens": 2}).status_code == 200  # no model: this one
