import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from nety_jax.config import load_config
from nety_jax.models import get_model
from nety_jax.training.metrics import read_metrics
from nety_jax.training.parallel import Runner
from nety_jax.training.steps import create_train_state
from nety_jax.training.loop import train
from conftest import ONE_LAYER, ROOT, TINY, run_main


def _batch(b=8, s=10, t=9, seed=0):
    rs = np.random.default_rng(seed)
    src = rs.integers(4, 64, (b, s)).astype(np.int32)
    lengths = rs.integers(3, s + 1, b).astype(np.int32)
    for i, n in enumerate(lengths):
        src[i, n:] = 0
    tgt = rs.integers(4, 64, (b, t)).astype(np.int32)
    for i, n in enumerate(rs.integers(3, t, b)):
        tgt[i, n:] = 0
    return {"src": src, "src_len": lengths, "tgt_in": tgt[:, :-1], "targets": tgt[:, 1:]}


def _run(cfg, backend, batches):
    model = get_model(cfg.model)
    runner = Runner(cfg, model, backend)
    state = runner.place_state(create_train_state(model, cfg.train, jax.random.PRNGKey(0)))
    losses, grad_norms = [], []
    for batch in batches:
        state, metrics = runner.train(state, batch)
        m = jax.device_get(metrics)
        losses.append(float(m["loss_sum"]) / float(m["tokens"]))
        grad_norms.append(float(m["grad_norm"]))
    return jax.device_get(state), losses, grad_norms


def _max_diff(a, b):
    return max(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))), a, b)))


@pytest.mark.parametrize("head_norm", ["batch", "layer"])
def test_pmap_and_shard_map_equal_single_device(head_norm):
    assert jax.local_device_count() == 4
    # attention key biases have an exactly-zero gradient; Adam with a tiny eps would turn
    # their float noise into full-size steps, so eps is raised above that noise here
    cfg = load_config(TINY, ["train.batch_size=8", f"model.head_norm={head_norm}",
                             "train.optimizer=adam", "train.eps=1e-6", *ONE_LAYER])
    batches = [_batch(seed=i) for i in range(3)]
    ref_state, ref_losses, ref_norms = _run(cfg, "none", batches)
    for backend in ("pmap", "shard_map"):
        state, losses, norms = _run(cfg, backend, batches)
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(norms, ref_norms, rtol=1e-5)
        assert _max_diff(state.params, ref_state.params) < 1e-5
        if head_norm == "batch":  # BatchNorm statistics averaged across devices
            assert _max_diff(state.mutables, ref_state.mutables) < 1e-5


def test_gradient_accumulation_equals_one_big_step():
    common = ["train.batch_size=16", "model.head_norm=layer", "train.optimizer=adam", "train.eps=1e-6",
              "train.clip_norm=0", *ONE_LAYER]
    base = load_config(TINY, common)
    accum = load_config(TINY, common + ["train.grad_accum=4"])
    batches = [_batch(b=16, seed=i) for i in range(2)]
    ref_state, ref_losses, ref_norms = _run(base, "none", batches)
    # on devices too: inside shard_map the accumulation's carry had other types than its body's
    # outputs (a TypeError traceback from `train --set train.parallel=shard_map --set train.grad_accum=2`)
    for backend in ("none", "pmap", "shard_map"):
        state, losses, norms = _run(accum, backend, batches)
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
        np.testing.assert_allclose(norms, ref_norms, rtol=1e-5)  # the gradients, not only Adam's steps
        assert _max_diff(state.params, ref_state.params) < 1e-5


def test_loss_falls_on_the_embedded_corpus(tmp_path):
    cfg = load_config(TINY, ["train.steps=200", "train.eval_every=50", "train.checkpoint_every=100",
                             "train.log_every=25", "data.vocab_size=150"])
    summary = train(cfg, str(tmp_path), progress=False, log=lambda *_: None)
    rows = read_metrics(str(tmp_path))
    val = [r["loss"] for r in rows if r["split"] == "val"]
    trn = [r["loss"] for r in rows if r["split"] == "train"]
    assert len(val) == 4 and val[-1] < val[0] - 0.5, val
    assert np.mean(trn[-2:]) < np.mean(trn[:2]) - 0.5, trn
    assert summary["status"] == "finished" and summary["step"] == 200
    assert "bleu" in rows[-1] and "chrf" in rows[-1]
    for name in ("config.yaml", "tokenizer.json", "tokenizer.model", "metrics.jsonl", "loss.png"):
        assert (tmp_path / name).exists(), name
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(tmp_path))
    kept = sorted(int(n) for n in os.listdir(tmp_path / "checkpoints") if n.isdigit())
    assert 200 in kept and len(kept) <= 3  # latest 2 + best 1


def _cli(workdir, steps, extra=()):
    return [sys.executable, "-m", "nety_jax.cli", "train", "--config", TINY, "--workdir", str(workdir),
            "--steps", str(steps), "--no-progress", "--set", "train.log_every=1",
            "--set", "train.checkpoint_every=1000", "--set", "train.eval_every=1000",
            "--set", "data.vocab_size=120", "--set", "model.dropout=0.1",
            *[a for o in ONE_LAYER for a in ("--set", o)], *extra]


def _params(workdir):
    from nety_jax.serving.pretrained import load_pretrained
    return jax.device_get(load_pretrained(str(workdir)).variables)


def test_sigterm_saves_and_resume_is_exact(tmp_path):
    """... with unigram subword sampling (tiny.yaml's tokenizer), which must redraw the same
    segmentations in the resumed process (the kill -9 test covers BPE-dropout)."""
    steps = 150
    sampled = ("--set", "data.subword_alpha=0.2")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(killed, steps, sampled), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        rows = read_metrics(str(killed)) if (killed / "metrics.jsonl").exists() else []
        if rows and rows[-1]["step"] >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "SIGTERM: saved step" in out
    saved = sorted(int(n) for n in os.listdir(killed / "checkpoints") if n.isdigit())
    assert saved and 5 <= saved[-1] < steps, (saved, out)

    done = run_main(*_cli(killed, steps, sampled)[3:])  # the resumed run: in this process
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"resumed from {killed} at step {saved[-1]}" in done.stdout

    straight = tmp_path / "straight"
    ref = run_main(*_cli(straight, steps, sampled)[3:])
    assert ref.returncode == 0, ref.stderr
    assert _max_diff(_params(killed), _params(straight)) <= 1e-6


def test_non_finite_loss_stops_with_a_clear_error(tmp_path):
    done = run_main(*_cli(tmp_path, 30, ["--set", "train.learning_rate=1e30", "--set", "train.clip_norm=0",
                                         "--set", "train.schedule=constant"])[3:])
    assert done.returncode == 2
    assert "non-finite loss at step" in done.stderr and "Traceback" not in done.stderr


def test_a_validation_split_without_tokens_is_never_scored(tmp_path):
    """One line of text: its validation window holds no token; a loss over 0 tokens read 0
    (perplexity 1) and picked the best checkpoint. Now nothing is evaluated, and it says so."""
    from conftest import GPT_TINY
    text = tmp_path / "one.txt"
    text.write_text("Le chat mange la souris dans la cuisine tous les jours.\n", encoding="utf-8")
    cfg = load_config(GPT_TINY, ["train.steps=4", "train.eval_every=2", "train.warmup_steps=1",
                                 "train.batch_size=1", "data.vocab_size=40"])
    said = []
    summary = train(cfg, str(tmp_path / "run"), data=[str(text)], progress=False, log=said.append)
    assert any("has no tokens to score; nothing is evaluated" in line for line in said), said
    assert not [r for r in read_metrics(str(tmp_path / "run")) if r["split"] == "val"]
    assert summary["status"] == "finished" and not summary.get("val_loss")


def test_resuming_on_text_the_saved_tokenizer_does_not_know_is_refused(trained_rnn_lm, tmp_path):
    import shutil
    from conftest import RNN_LM
    from nety_jax.errors import DataError
    run = tmp_path / "run"
    shutil.copytree(trained_rnn_lm[0], run)
    new = tmp_path / "new.txt"
    new.write_text("\n".join(f"zorglub{i} quixotique{i} brontosaure{i}" for i in range(50)), encoding="utf-8")
    cfg = load_config(RNN_LM, ["train.steps=210", "model.hidden=128"])
    with pytest.raises(DataError, match=r"new\.txt: 100% of its [0-9]+ tokens are unknown \(<unk>\)"):
        train(cfg, str(run), data=[str(new)], progress=False, log=lambda *_: None)
    from nety_jax.data.coverage import check_coverage
    from nety_jax.data.tokenizer import load_tokenizer
    said = []  # a quarter unknown: trained on, with a warning
    share = check_coverage(load_tokenizer(str(run)), [f"le chat zorglub{i} la" for i in range(50)], "mixed.txt",
                           said.append)
    assert share == 0.25 and said == ["warning: mixed.txt: 25% of its tokens are unknown (<unk>) to the saved "
                                      "tokenizer this run must use"]
