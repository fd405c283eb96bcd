"""QA round 7: `serve --exported` of a beam-search export ignored a request's sampling fields
silently (every seed the same reply, n=2 two identical replies); they are a 400 naming the field,
as the export's Python API refuses them (``ExportedModel._check_request``)."""
import pytest
from fastapi.testclient import TestClient

from nety_jax.serving.engine import ExportedBackend
from nety_jax.serving.export import export_run, load_exported
from nety_jax.serving.server import create_app


@pytest.fixture(scope="module")
def beam_app(trained_gpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("qa7") / "beam-export"
    exported = load_exported(export_run(trained_gpt[0], str(out), overrides=["decode.beam_size=3"]))
    with TestClient(create_app(ExportedBackend(exported), "beam", batching="dynamic")) as client:
        yield client


@pytest.mark.parametrize("field, value", [("temperature", 5.0), ("top_k", 3), ("top_p", 0.5), ("seed", 7)])
def test_a_sampling_field_a_beam_export_does_not_take_is_a_400_naming_it(beam_app, field, value):
    r = beam_app.post("/v1/completions", json={"prompt": "Le chat", "max_tokens": 4, field: value})
    assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text
    assert "does not take it at run time" in r.json()["error"]["message"]


def test_n_above_one_on_a_beam_export_is_a_400_and_plain_requests_still_work(beam_app):
    r = beam_app.post("/v1/completions", json={"prompt": "Le chat", "max_tokens": 4, "n": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n", r.text
    ok = beam_app.post("/v1/completions", json={"prompt": "Le chat", "max_tokens": 4})
    assert ok.status_code == 200 and len(ok.json()["choices"]) == 1, ok.text
