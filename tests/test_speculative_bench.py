"""The copy GPT of scripts/bench_speculative.py: a base run on the shipped lines (quoted in half
the documents), fine-tuned on documents that quote unmemorisable passages (so that only copying
its context lowers the loss); the bench's repeating prompts quote passages no training text holds;
its weights do not fit a CPU's cache; its corpora live beside the runs (train writes only into an
empty directory or a run)."""
import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import bench_speculative as B  # noqa: E402

from nety_jax.config import load_config  # noqa: E402

# the copy prompts before the fine-tuned model: two shipped lines, then the first one's start again
SHIPPED_PROMPTS = ["Léa va au marché pour acheter des légumes frais. Le soir, Julien peint un tableau. Léa va au",
                   "Inès habite à Rennes et travaille en voiture. Zoé regarde la poule qui mange du grain. Inès"]


def _quoted(doc: str):
    """(passage, between, occurrences) when ``doc`` is a passage, maybe a line, then the passage
    again one or more times; else None."""
    first = doc.split(".")[0] + "."
    count = doc.count(first)
    if count < 2:
        return None
    rest = doc[len(first):].strip()
    between = rest[:rest.index(first)].strip()
    assert rest[len(between):].strip() == " ".join([first] * (count - 1)), doc
    return first, between, count


def test_base_corpus_documents_are_shipped_lines_half_of_them_quoted_again(tmp_path):
    lines, _ = B._shipped()
    docs = open(B.base_corpus(str(tmp_path / "c.txt"), documents=400), encoding="utf-8").read().splitlines()
    assert len(docs) == 400
    quoted = 0
    for doc in docs:
        half = (len(doc) - 1) // 2
        repeated = len(doc) % 2 == 1 and doc[:half] == doc[half + 1:] and doc[half] == " "
        passage = doc[:half] if repeated else doc
        quoted += repeated
        assert any(passage.startswith(line) for line in lines), doc
    assert 150 < quoted < 250


@pytest.mark.parametrize("quotes", [2, 4])
def test_copy_corpus_quotes_unmemorisable_passages_in_half_the_documents(tmp_path, quotes):
    lines, words = B._shipped()
    docs = open(B.copy_corpus(str(tmp_path / "c.txt"), 400, 1, quotes), encoding="utf-8").read().splitlines()
    quoted = [q for q in map(_quoted, docs) if q]
    assert 150 < len(quoted) < 250
    assert {n for _, _, n in quoted} == set(range(2, quotes + 1))
    for passage, between, _ in quoted:
        assert 4 <= len(passage.split()) <= 14
        assert {w.strip(".").lower() for w in passage.split()} <= {w.lower() for w in words}
        assert not any(passage[:-1] in line for line in lines)  # not a shipped line: only copying predicts it
        assert between == "" or between in lines
    assert len({p for p, _, _ in quoted}) == len(quoted)  # never the same passage twice
    natural = [d for d in docs if not _quoted(d)]
    assert all(any(d.startswith(line) for line in lines) for d in natural)


def test_the_copy_prompts_are_unseen_and_the_check_catches_seen_ones(tmp_path):
    lines, _ = B._shipped()
    prompts = B.PROMPTS["copy"]["repeats"]
    assert prompts == B.copy_prompts() and len(prompts) == 4
    training = lines + [open(B.base_corpus(str(tmp_path / "base.txt")), encoding="utf-8").read()]
    for i, (_, documents, seed, quotes, _, *share) in enumerate(B.COPY_STAGES):  # every stage's corpus
        training.append(open(B.copy_corpus(str(tmp_path / f"{i}.txt"), documents, seed, quotes, *share),
                             encoding="utf-8").read())
    assert B.seen_passages(prompts, training) == []
    assert B.seen_passages(SHIPPED_PROMPTS, training) == SHIPPED_PROMPTS  # the check fails on seen passages
    for p in prompts:  # the passage, maybe a line, then the passage's first two words again
        head = " ".join(p.split()[:2])
        assert p.endswith(" " + head) and 10 <= len(p.split()) <= 30


def test_copy_losses_tell_a_copier_from_a_model_that_does_not_copy():
    vocab = 50

    class Tokenizer:
        def encode(self, text):
            return [4 + sum(map(ord, w)) % (vocab - 4) for w in text.split()]

    class Model:
        tokenizer = Tokenizer()

        def __init__(self, copies):
            self.copies = copies

        def logits(self, batch):
            tokens = batch["tokens"][0]
            out = np.zeros((1, len(tokens), vocab), np.float32)
            n = len(tokens) // 2
            if self.copies:  # a perfect copier: certain of each token of the second occurrence
                out[0, np.arange(n, 2 * n - 1), tokens[n + 1:]] = 100.0
            return out

    plain, copier = B.copy_losses(Model(False), count=3), B.copy_losses(Model(True), count=3)
    assert math.isclose(plain["first_occurrence_loss"], math.log(vocab), rel_tol=1e-6)
    assert math.isclose(plain["second_occurrence_loss"], math.log(vocab), rel_tol=1e-6)
    assert math.isclose(copier["first_occurrence_loss"], math.log(vocab), rel_tol=1e-6)
    assert copier["second_occurrence_loss"] < 1e-6


def test_the_copy_config_is_weight_bound_and_fits_the_prompts():
    cfg = load_config(B.COPY_CONFIG, ["model.vocab_size=400"]).model
    weights = cfg.layers * (4 * cfg.d_model ** 2 + 2 * cfg.d_model * cfg.d_ff) + cfg.d_model * cfg.vocab_size
    assert weights * 4 > 48 * 2 ** 20  # float32 bytes: well past a 32 MB last-level cache
    assert cfg.max_len >= 128


def _fake_training(monkeypatch, record) -> list:
    """train_copy's training calls, recorded by ``record`` (each writes its final checkpoint's
    folder, as a finished run has) instead of run."""
    calls = []

    def fake_train(cfg, workdir, data, init_from=None, **kw):
        calls.append(record(cfg, workdir, data, init_from))
        os.makedirs(os.path.join(workdir, "checkpoints", str(cfg.train.steps)))
        return {"start_step": 0}

    monkeypatch.setattr("nety_jax.training.loop.train", fake_train)
    monkeypatch.setattr("nety_jax.training.init_from.load_source", lambda path: f"source {path}")
    monkeypatch.setattr("nety_jax.training.init_from.finetune_config",
                        lambda source, path, overrides: load_config(path, overrides))
    return calls


def test_train_copy_trains_the_base_then_each_fine_tune_from_the_run_before(tmp_path, monkeypatch):
    calls = _fake_training(monkeypatch, lambda cfg, workdir, data, init_from: (workdir, data, init_from,
                                                                               cfg.train.steps))
    monkeypatch.setattr(B, "COPY_STAGES", ((30, 40, 1, 2, []), (50, 60, 2, 3, ["data.packing=true"])))
    run, base = str(tmp_path / "copier"), str(tmp_path / "base")
    assert B.train_copy(run, base) == run
    assert calls == [(base, base + "-corpus.txt", None, load_config(B.COPY_CONFIG).train.steps),
                     (run + "-1", run + "-1-corpus.txt", f"source {base}", 30),
                     (run, run + "-corpus.txt", f"source {run}-1", 50)]
    assert open(base + "-corpus.txt").read() == open(B.base_corpus(str(tmp_path / "b.txt"))).read()
    assert open(run + "-1-corpus.txt").read() == open(B.copy_corpus(str(tmp_path / "1.txt"), 40, 1)).read()
    assert open(run + "-corpus.txt").read() == open(B.copy_corpus(str(tmp_path / "2.txt"), 60, 2, 3)).read()
    B.train_copy(run, base)  # a finished run is reused as it is, and its stages are not needed
    assert len(calls) == 3


def test_train_copy_starts_after_the_latest_finished_stage(tmp_path, monkeypatch):
    calls = _fake_training(monkeypatch, lambda cfg, workdir, data, init_from: (workdir, init_from,
                                                                               cfg.train.steps, cfg.train.schedule))
    monkeypatch.setattr(B, "COPY_STAGES", ((30, 40, 1, 2, []), (50, 60, 2, 3, []),
                                           (70, 80, 3, 4, ["train.schedule=constant"], 0.75)))
    run, base = str(tmp_path / "copier"), str(tmp_path / "base")
    os.makedirs(os.path.join(run + "-2", "checkpoints", "50"))  # stage 2 copied in: neither base nor stage 1 needed
    assert B.train_copy(run, base) == run
    assert calls == [(run, f"source {run}-2", 70, "constant")]
    assert open(run + "-corpus.txt").read() == open(B.copy_corpus(str(tmp_path / "3.txt"), 80, 3, 4, 0.75)).read()


def test_the_copy_share_sets_the_share_of_quoting_documents(tmp_path):
    def quoting(share):
        docs = open(B.copy_corpus(str(tmp_path / f"{share}.txt"), 2000, 5, 2, share)).read().splitlines()
        return sum(d.split(".")[0] + "." in d[len(d.split(".")[0]) + 1:] for d in docs) / len(docs)
    assert abs(quoting(0.5) - 0.5) < 0.05 and abs(quoting(0.75) - 0.75) < 0.05


def _run(path, steps: int, at: int) -> str:
    """A run directory whose config asks ``steps`` steps, with its newest checkpoint at ``at``."""
    os.makedirs(os.path.join(path, "checkpoints", str(at)))
    with open(os.path.join(path, "config.yaml"), "w") as f:
        f.write(f"train:\n  steps: {steps}\n")
    return str(path)


def test_timing_refuses_a_copy_run_that_is_not_finished_and_never_trains_it(tmp_path, monkeypatch, capsys):
    trained = []
    monkeypatch.setattr(B, "train_copy", lambda *a: trained.append(a))
    for run, why in [(str(tmp_path / "none"), "not a trained run"),
                     (_run(tmp_path / "half", 400, 200), "at step 200 of 400")]:
        monkeypatch.setattr(sys, "argv", ["bench_speculative.py", "--trained", "copy", "--costs", "", "--copy", run])
        assert B.main() == 2
        err = capsys.readouterr().err
        assert why in err and "--prepare" in err and len(err.strip().splitlines()) == 1
    assert trained == []
    assert B.unfinished_copy(_run(tmp_path / "done", 400, 400)) is None


def test_ab_script_times_versions_of_the_loop_and_checks_their_replies(trained_gpt, tmp_path, capsys, monkeypatch):
    """scripts/ab_speculative.py: the working tree's loop and a copy of it (a file path as a version)
    against plain decoding in one process; a version that replies differently is refused."""
    import ab_speculative as AB
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    copy = tmp_path / "copy.py"
    copy.write_text(open(os.path.join(root, AB.MODULE), encoding="utf-8").read())
    argv = ["ab_speculative.py", "--run", trained_gpt[0], "--prompts", "Le chat|Bonjour", "--rounds", "2",
            "--new-tokens", "4", "WORKTREE", str(copy)]
    monkeypatch.setattr(sys, "argv", argv)
    assert AB.main() == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[-1].startswith("all prompts")
    ratios = [float(x) for x in lines[-1].split("WORKTREE: ")[1].split(f"   {copy}: ")]
    assert all(0 < r < 100 for r in ratios)
    # a loop that emits another token is caught before any timing
    plain_step = "nxt = sample_rows(logits, s.params"
    copy.write_text(copy.read_text().replace(plain_step, plain_step.replace("= ", "= 1 + ")))
    monkeypatch.setattr(sys, "argv", argv[:-2] + [str(copy)])
    assert AB.main() == 1
    assert "replies differently" in capsys.readouterr().err
