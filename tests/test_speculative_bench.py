"""The copy GPT of scripts/bench_speculative.py: its training text quotes its own passages (the
case prompt-lookup speculation is for), its weights do not fit a CPU's cache, and its run
directory holds the corpus it is trained on (train() itself resumes or reuses a finished run)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import bench_speculative as B  # noqa: E402

from nety_jax.config import load_config  # noqa: E402
from nety_jax.data.text import default_text_path  # noqa: E402


def test_copy_corpus_documents_are_shipped_lines_half_of_them_quoted_again(tmp_path):
    with open(default_text_path(), encoding="utf-8") as f:
        shipped = {line.strip() for line in f if line.strip()}
    docs = open(B.copy_corpus(str(tmp_path / "c.txt"), documents=400), encoding="utf-8").read().splitlines()
    assert len(docs) == 400
    quoted = 0
    for doc in docs:
        half = (len(doc) - 1) // 2
        repeated = len(doc) % 2 == 1 and doc[:half] == doc[half + 1:] and doc[half] == " "
        passage = doc[:half] if repeated else doc
        quoted += repeated
        # a passage is 1-3 whole shipped lines (each ends its sentence with . ! or ?)
        assert any(passage.startswith(line) for line in shipped), doc
    assert 150 < quoted < 250


def test_the_copy_config_is_weight_bound_and_fits_the_prompts():
    cfg = load_config(B.COPY_CONFIG, ["model.vocab_size=400"]).model
    weights = cfg.layers * (4 * cfg.d_model ** 2 + 2 * cfg.d_model * cfg.d_ff) + cfg.d_model * cfg.vocab_size
    assert weights * 4 > 48 * 2 ** 20  # float32 bytes: well past a 32 MB last-level cache
    assert cfg.max_len >= 128


def test_train_copy_writes_its_corpus_into_the_run_and_trains_on_it(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("nety_jax.training.loop.train",
                        lambda cfg, workdir, data, **kw: calls.append(data) or {"start_step": cfg.train.steps})
    assert B.train_copy(str(tmp_path)) == str(tmp_path)
    assert calls == [str(tmp_path / "copy_corpus.txt")] and os.path.exists(calls[0])
