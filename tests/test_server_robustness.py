"""The server under adversarial use: streamed text equals non-streamed text for any stop string and
chunk size, no request body gets a 500, options are checked at start-up, /metrics stays bounded."""
import json
import re
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings, strategies as st

from nety_jax.config.sections import EOS_ID, DataConfig, DecodeConfig
from nety_jax.serving.engine import Engine, Job, Row
from nety_jax.serving.server import create_app
from conftest import ROOT

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
TEXT = (ROOT / "nety_jax" / "resources" / "textes_fr.txt").read_text(encoding="utf-8").splitlines()[:400]


class _Prompts:
    model_cfg = type("ModelCfg", (), {"max_len": 512})()

    def ids(self, tokenizer, text, data_cfg):
        if text == "crash":  # an unexpected exception inside a request: the crash handler's 500
            raise RuntimeError("boom")
        return tokenizer.encode(text)

    def limit(self, data_cfg, max_new_tokens):
        return 256

    def max_new_tokens(self):
        return 256


class ScriptBackend:
    """A model-free backend: each row 'generates' its prompt ids, revealed ``chunk`` tokens at a
    time as the real loop does (a row the engine stops produces nothing more)."""

    prompts, prompt_limit = _Prompts(), 256

    def __init__(self, tokenizer, max_new_tokens=64, fail_on=None):
        from nety_jax.tasks import get_task
        self.task = get_task("lm")
        self.tokenizer, self.max_new_tokens = tokenizer, max_new_tokens
        self.fail_on = fail_on and tokenizer.encode(fail_on)
        self.data_cfg, self.decode = DataConfig(), DecodeConfig(max_new_tokens=max_new_tokens)

    def run(self, batch, rows, on_chunk, chunk):
        if any(r.ids == self.fail_on for r in rows):
            raise RuntimeError("generation failed on purpose")
        width = max(r.max_new_tokens for r in rows)
        script = np.zeros((len(rows), width), np.int32)
        for k, r in enumerate(rows):
            script[k, : min(len(r.ids), width)] = r.ids[:width]
        tokens, stopped = np.zeros_like(script), np.zeros(len(rows), bool)
        for pos in range(0, width, chunk):
            live = ~stopped
            tokens[live, pos: pos + chunk] = script[live, pos: pos + chunk]
            done = np.array([pos + chunk >= r.max_new_tokens or EOS_ID in tokens[k] for k, r in enumerate(rows)])
            stopped |= on_chunk(tokens, done)
            if stopped.all():
                break
        return tokens, None


@pytest.fixture(scope="module", params=["sentencepiece", "word"])
def tokenizer(request):
    from nety_jax.data.tokenizer import SentencePieceTokenizer, WordTokenizer
    if request.param == "word":
        return WordTokenizer.build(TEXT, 400)
    return SentencePieceTokenizer.train(TEXT, 300)


@pytest.fixture(scope="module")
def engine(tokenizer):
    return Engine(ScriptBackend(tokenizer), max_batch=4, window_ms=0.0)


def _complete(engine, ids, stops, stream):
    """(joined streamed pieces, final text, tokens) of one row through the engine."""
    pieces, final, finished = [], [], threading.Event()

    def deliver(kind, payload):
        if kind == "delta":
            pieces.append(payload[1])
        else:
            final.append(payload)
            finished.set()
    engine.submit(Job([Row(list(ids), 0.0, 0, 1.0, 64, 0, tuple(stops))], deliver, stream))
    assert finished.wait(60)
    assert final[0] != "error" and not isinstance(final[0], str), final
    return "".join(pieces), final[0][0].text, final[0][0].tokens


def _reference(tokenizer, ids, stops):
    """The text of the first token after which a stop string appears, cut where the earliest stop
    string starts (vLLM's and OpenAI's rule), computed token by token."""
    ended = EOS_ID in ids
    ids = ids[: ids.index(EOS_ID)] if ended else ids
    for n in range(1, len(ids) + 1):
        text = tokenizer.decode(ids[:n])
        hits = [text.find(s) for s in stops if s and s in text]
        if hits:
            return text[: min(hits)], n
    return tokenizer.decode(ids), len(ids) + ended


@PROPERTY
@given(data=st.data())
def test_streamed_text_equals_non_streamed_text_for_any_stop_string_and_chunk(engine, tokenizer, data):
    ids = data.draw(st.lists(st.integers(4, tokenizer.vocab_size - 1) | st.just(EOS_ID), min_size=1, max_size=40))
    text = tokenizer.decode(ids[: ids.index(EOS_ID)] if EOS_ID in ids else ids)
    some_text = st.text(min_size=1, max_size=6) | st.builds(lambda a, n: text[a: a + n], st.integers(0, max(len(text) - 1, 0)),
                                                            st.integers(1, 8))
    stops = data.draw(st.lists(some_text, max_size=4))
    engine.chunk = data.draw(st.integers(1, 12))
    streamed, streamed_final, tokens = _complete(engine, ids, stops, stream=True)
    engine.chunk = data.draw(st.integers(1, 12))
    _, whole, whole_tokens = _complete(engine, ids, stops, stream=False)
    expected, expected_tokens = _reference(tokenizer, ids, stops)
    assert streamed == streamed_final == whole == expected, (ids, stops)
    assert tokens == whole_tokens == expected_tokens


# -- the HTTP surface --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(trained_gpt):
    from nety_jax.serving.engine import PretrainedBackend
    from nety_jax.serving.pretrained import load_pretrained
    backend = PretrainedBackend(load_pretrained(trained_gpt[0]), 4)
    with TestClient(create_app(backend, "tiny", max_batch=8, window_ms=0.0), raise_server_exceptions=False) as c:
        yield c


_chars = st.text(st.characters(codec=None), max_size=30)  # every code point but surrogates,
any_text = _chars | st.builds(  # added here: a lone one anywhere
    lambda a, s, b: a + s + b, _chars, st.integers(0xD800, 0xDFFF).map(chr), _chars)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | any_text,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
                           max_leaves=6)
fields = st.dictionaries(st.sampled_from(["max_tokens", "temperature", "top_p", "top_k", "n", "seed", "stop",
                                          "stream", "stream_options", "logprobs", "max_completion_tokens"]),
                         json_values | st.integers(-3, 70), max_size=4)
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "robot"]),
                                           "content": any_text | json_values}), max_size=3)
bodies = st.one_of(
    st.tuples(st.just("/v1/completions"), st.builds(lambda p, f: {"prompt": p, **f}, any_text | json_values, fields)),
    st.tuples(st.just("/v1/chat/completions"), st.builds(lambda m, f: {"messages": m, **f}, messages, fields)),
    st.tuples(st.sampled_from(["/v1/completions", "/v1/chat/completions"]), json_values))


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(bodies)
def test_no_request_body_gets_a_500(client, body):
    path, value = body
    r = client.post(path, content=json.dumps(value), headers={"content-type": "application/json"})
    assert r.status_code < 500, (value, r.text)
    if r.status_code >= 400:
        assert r.json()["error"]["message"]


def test_lone_surrogates_and_usage_counted_once(client):
    r = client.post("/v1/completions", content=b'{"prompt": "Le \\ud800 chat", "max_tokens": 2}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt", r.text
    assert "lone surrogate (U+D800)" in r.json()["error"]["message"]
    one = client.post("/v1/completions", json={"prompt": "Le chat", "max_tokens": 2}).json()["usage"]
    three = client.post("/v1/completions", json={"prompt": "Le chat", "max_tokens": 2, "n": 3}).json()["usage"]
    assert three["prompt_tokens"] == one["prompt_tokens"] > 0  # OpenAI counts the prompt once
    assert client.head("/health").status_code == 200


def test_metrics_label_routes_not_paths_and_count_5xx(tokenizer):
    app = create_app(ScriptBackend(tokenizer, fail_on="échec"), "script", window_ms=0.0)
    with TestClient(app, raise_server_exceptions=False) as c:
        for i in range(120):
            assert c.get(f"/invented/{i}").status_code == 404
            c.get(f"/v1/models/other-{i}")
        assert c.post("/v1/completions", json={"prompt": "crash"}).status_code == 500  # crash handler
        assert c.post("/v1/completions", json={"prompt": "échec"}).status_code == 500  # generation error
        text = c.get("/metrics").text
    series = re.findall(r'^nety_requests_total\{endpoint="([^"]*)",status="(\d+)"\} ([0-9.]+)$', text, re.M)
    counts = {(e, s): float(v) for e, s, v in series}
    assert counts[("(unknown)", "404")] == 120 and counts[("/v1/models/{model_id:path}", "404")] == 120
    assert counts[("/v1/completions", "500")] == 2
    assert len(series) <= 4 and len(text) < 20_000, series


@pytest.mark.parametrize("flag, value, message", [
    ("--batch-window-ms", "inf", "--batch-window-ms=inf must be a finite number between 0.0 and 10000.0"),
    ("--batch-window-ms", "nan", "--batch-window-ms=nan must be a finite number"),
    ("--batch-window-ms", "-1", "--batch-window-ms=-1.0 must be a finite number between 0.0"),
    ("--max-batch", "0", "--max-batch=0 must be between 1 and 4096"),
    ("--queue-size", "-5", "--queue-size=-5 must be between 1"),
    ("--chunk", "0", "--chunk=0 must be between 1"),
    ("--max-tokens", "0", "--max-tokens=0 must be between 1"),
    ("--stream-interval-ms", "-1", "--stream-interval-ms=-1.0 must be a finite number between 0.0"),
])
def test_serve_options_are_checked_before_anything_loads(capsys, flag, value, message):
    from nety_jax.cli import main
    assert main(["serve", "--checkpoint", "no/such/run", "--port", "0", flag, value]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_serve_max_tokens_beyond_the_models_room_is_refused_with_the_numbers(trained_gpt, capsys):
    from nety_jax.cli import main
    assert main(["serve", "--checkpoint", trained_gpt[0], "--port", "0", "--max-tokens", "64"]) == 2
    assert "--max-tokens=64 is more than this model can produce: model.max_len=64 leaves room for at most 63" \
        in capsys.readouterr().err


def test_the_longest_max_tokens_still_serves_short_prompts(trained_gpt):
    """The padded prompt bucket never takes positions a one-token prompt leaves for the reply."""
    from nety_jax.serving.engine import PretrainedBackend
    from nety_jax.serving.pretrained import load_pretrained
    backend = PretrainedBackend(load_pretrained(trained_gpt[0]), 63)
    with TestClient(create_app(backend, "tiny", window_ms=0.0), raise_server_exceptions=False) as c:
        r = c.post("/v1/completions", json={"prompt": "Le", "max_tokens": 63, "temperature": 0})
    assert r.status_code == 200, r.text


def test_an_exports_max_tokens_is_at_most_its_compiled_maximum(trained_gpt):
    """serve --exported: --max-tokens beyond what the artifact was compiled for is refused with the
    numbers; a smaller one is honoured while prompts keep the artifact's own limit."""
    from nety_jax.errors import NetyError
    from nety_jax.serving.engine import ExportedBackend
    from nety_jax.serving.pretrained import load_pretrained
    model = load_pretrained(trained_gpt[0])
    exported = type("Exported", (), {"tokenizer": model.tokenizer, "config": model.config, "task": model.task,
                                     "prompts": model.model.prompts, "info": {"max_new_tokens": 24}})()
    with pytest.raises(NetyError, match="--max-tokens=30 is more than the export's compiled maximum of 24"):
        ExportedBackend(exported, 30)
    backend = ExportedBackend(exported, 8)
    assert backend.max_new_tokens == 8 and backend.prompt_limit == model.model.prompts.limit(model.config.data, 24)
    # a max_tokens past the compiled maximum: the 400 says to re-export, not to raise --max-tokens
    from nety_jax.serving.engine import Engine
    engine = Engine(ExportedBackend(exported))
    assert "re-export with --set decode.max_new_tokens" in engine.max_tokens_why, engine.max_tokens_why
    assert "--max-tokens" not in engine.max_tokens_why
    engine.close()


def test_create_app_checks_its_options_too(tokenizer):
    from nety_jax.errors import NetyError
    for kwargs, name in (({"window_ms": float("inf")}, "--batch-window-ms"), ({"max_batch": 0}, "--max-batch"),
                         ({"chunk": 1.5}, "--chunk"), ({"queue_size": "8"}, "--queue-size"),
                         ({"stream_interval_ms": float("nan")}, "--stream-interval-ms")):
        with pytest.raises(NetyError, match=name):
            create_app(ScriptBackend(tokenizer), "script", **kwargs)
