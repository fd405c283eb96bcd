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


def test_a_completion_continues_its_prompt_with_its_leading_space(tokenizer):
    """/v1/completions of a language model: prompt + text must be the whole text, as OpenAI and
    vLLM return it. The reply was decoded alone, which drops its first word's space ("le chat" +
    "le chat" read "le chatle chat"); streamed pieces and stop strings see the same text. A chat
    reply is a message of its own: no leading space."""
    import json
    with TestClient(create_app(ScriptBackend(tokenizer), "tiny", window_ms=0.0)) as c:  # replies echo the prompt
        body = {"prompt": "le chat", "max_tokens": 2}
        text = c.post("/v1/completions", json=body).json()["choices"][0]["text"]
        assert "le chat" + text == "le chat le chat", text
        with c.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
            pieces = [json.loads(line[6:])["choices"][0]["text"] for line in r.iter_lines()
                      if line.startswith("data: {")]
        assert "".join(pieces) == text
        assert c.post("/v1/completions", json={**body, "stop": ["chat"]}).json()["choices"][0]["text"] == " le "
        chat = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "le chat"}],
                                                    "max_tokens": 2}).json()["choices"][0]["message"]["content"]
        assert chat == "le chat"
