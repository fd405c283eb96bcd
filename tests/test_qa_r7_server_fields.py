"""QA round 7: what the server accepted and silently ignored. A request field it does not know
(vLLM's sampling extensions, a typo of max_tokens) got a 200 reply that ignored it; a stop
sequence with a lone surrogate got a 200 (a prompt with one is a 400); `serve --exported` took
--slots, --chunk and --prefix-cache-mb, which an export has no use for, without a word."""
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


@pytest.mark.parametrize("field, value", [("min_tokens", 5), ("repetition_penalty", 1.3), ("ignore_eos", True),
                                          ("stop_token_ids", [2]), ("max_new_tokens", 3)])
def test_a_field_the_server_does_not_know_is_a_400_naming_it(client, field, value):
    for path, body in (("/v1/completions", {"prompt": "le chat"}), ("/v1/chat/completions", CHAT)):
        r = client.post(path, json={**body, "max_tokens": 2, field: value})
        assert r.status_code == 400 and r.json()["error"]["param"].startswith(field), r.text


def test_fields_that_do_not_change_a_reply_are_accepted(client):
    r = client.post("/v1/completions", json={"prompt": "le chat", "max_tokens": 2, "user": "u1",
                                             "metadata": {"k": "v"}, "store": False})
    assert r.status_code == 200, r.text


def test_a_stop_sequence_with_a_lone_surrogate_is_a_400(client):
    r = client.post("/v1/completions", content=b'{"prompt": "le chat", "max_tokens": 2, "stop": ["\\ud800"]}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("stop"), r.text


@pytest.mark.parametrize("flag, value", [("--slots", "4"), ("--chunk", "2"), ("--prefix-cache-mb", "0")])
def test_serve_exported_refuses_the_flags_of_a_run_directorys_engines(capsys, tmp_path, flag, value):
    from nety_jax.cli import main
    assert main(["serve", "--exported", str(tmp_path / "none"), "--port", "0", flag, value]) == 2
    err = capsys.readouterr().err
    assert f"{flag} needs --checkpoint" in err and len(err.strip().splitlines()) == 1, err
