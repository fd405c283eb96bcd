"""``nety-jax serve --admit-batch N`` (continuous batching: the rows a chunk waits for while every
slot is taken and requests wait): checked before anything loads, refused where the server
batches dynamically, passed to the engine by ``serve`` and ``create_app``, and printed."""
import pytest

from nety_jax.errors import NetyError
from nety_jax.serving.server import create_app
from test_server_robustness import TEXT, ScriptBackend


@pytest.mark.parametrize("argv, message", [
    (["--admit-batch", "0"], "--admit-batch=0 must be"),
    (["--slots", "4", "--admit-batch", "5"], "--admit-batch=5 must be at most --slots (4)"),
    (["--batching", "dynamic", "--admit-batch", "2"], "--admit-batch needs continuous batching"),
    (["--speculate", "ngram", "--admit-batch", "2"], "--admit-batch needs continuous batching"),
])
def test_admit_batch_is_checked_before_anything_loads(capsys, argv, message):
    from nety_jax.cli import main
    assert main(["serve", "--checkpoint", "no/such/run", "--port", "0"] + argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_admit_batch_with_an_export_is_refused_before_it_loads(capsys, tmp_path):
    from nety_jax.cli import main
    assert main(["serve", "--exported", str(tmp_path / "none"), "--port", "0", "--admit-batch", "2"]) == 2
    err = capsys.readouterr().err
    assert "--admit-batch needs continuous batching" in err and len(err.strip().splitlines()) == 1, err


def test_create_app_refuses_admit_batch_with_dynamic_batching():
    """A backend that cannot pause its loop is served dynamically: an admit batch there would be
    silently ignored."""
    from nety_jax.data.tokenizer import WordTokenizer
    backend = ScriptBackend(WordTokenizer.build(TEXT, 400))
    with pytest.raises(NetyError, match="--admit-batch needs continuous batching"):
        create_app(backend, "script", admit_batch=2)
    with pytest.raises(NetyError, match="--admit-batch=0 must be"):
        create_app(backend, "script", batching="continuous", admit_batch=0)


def test_serve_passes_admit_batch_to_the_engine_and_prints_it(trained_gpt, capsys, monkeypatch):
    """The whole path: the flag, ``serve``, ``create_app``, the engine, the start-up line; without
    the flag the engine's default (2, or --slots if fewer)."""
    from nety_jax.cli import main
    from nety_jax.serving import server
    engines = []

    class NoHttp:
        def __init__(self, app):
            engines.append(app.state.server.engine)

        def run(self, sockets):
            engines[-1].close()
            sockets[0].close()

    monkeypatch.setattr(server, "http_server", NoHttp)
    for argv, admit in ((["--slots", "4", "--admit-batch", "3"], 3), (["--slots", "4"], 2), (["--slots", "1"], 1)):
        assert main(["serve", "--checkpoint", trained_gpt[0], "--port", "0", "--no-warm-up"] + argv) == 0
        line = capsys.readouterr().out.strip().splitlines()[-1]
        assert engines[-1].admit_batch == admit and f"admit batch {admit}," in line, line
