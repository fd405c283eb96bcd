"""Kills, damaged files, changed settings and full disks: nothing is lost, every refusal is one line."""
import glob
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from nety_jax.runs.checkpoints import steps_on_disk
from nety_jax.training.metrics import read_metrics
from conftest import ONE_LAYER, QUIET, ROOT, TINY, run_main

CLI = [sys.executable, "-m", "nety_jax.cli"]
# `nety-jax` in this process where the process itself is not what is tested (a kill, a lock held
# by another process, a file-size limit): the same main(), without an interpreter and JAX start
cli = run_main


def one_line_error(done, message):
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def params_of(workdir):
    from nety_jax.serving.pretrained import load_pretrained
    return jax.device_get(load_pretrained(str(workdir), warn=lambda *_: None).variables)


def max_diff(a, b):
    return max(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))), a, b)))


def train_args(workdir, steps, *extra):
    return ["train", "--config", TINY, "--workdir", str(workdir), "--steps", str(steps), "--no-progress",
            "--set", "train.log_every=2", "--set", "train.checkpoint_every=4", "--set", "train.eval_every=1000",
            "--set", "data.vocab_size=120", "--set", "model.dropout=0.1", "--set", "train.warmup_steps=2", *extra]


ONE_LAYER_SETS = [a for o in ONE_LAYER for a in ("--set", o)]


def tensorboard_steps(workdir, tag="train/loss"):
    """Steps of a scalar as TensorBoard shows them (it drops events purged by a restart)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(workdir))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def _start_and_kill(workdir, steps, rng, extra=(), after_checkpoint=False):
    """Starts a training; kills it (-9) during start-up one time in five, else at a random moment
    of its training (steps, log writes and asynchronous checkpoint writes); ``after_checkpoint``:
    once a checkpoint is on disk. Returns its output."""
    import threading
    proc = subprocess.Popen([*CLI, *train_args(workdir, steps, *extra)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines, training = [], threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("data:"):
                training.set()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if after_checkpoint:
        deadline = time.time() + 120
        while not steps_on_disk(str(workdir)) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.0))
    elif rng.random() < 0.2:
        time.sleep(rng.uniform(0.3, 2.0))
    else:
        training.wait(timeout=120)
        time.sleep(rng.uniform(1.5, 5.0))  # the first steps come about 2 s after "data:"
    if proc.poll() is not None:
        pytest.fail(f"the run finished before it was killed: {''.join(lines)[-500:]}")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    reader.join(timeout=10)
    return "".join(lines)


@pytest.mark.slow
def test_kill_minus_9_at_random_moments_resumes_exactly(tmp_path):
    """3 cycles of start, kill -9 at a seeded random moment (2 in training, then 1 in the start-up
    of a run resuming), restart; then the run finishes and equals an uninterrupted one bit for
    bit, and its logs hold every step once."""
    steps, rng = 200, random.Random(20261122)
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    # with BPE-dropout, as in the shipped configs: every batch's segmentation is sampled too
    bpe = ("--set", "data.spm_model_type=bpe", "--set", "data.subword_alpha=0.1",
           *ONE_LAYER_SETS)  # depth does not change a resume
    # runs with no kill to come write their checkpoint at the end only: an Orbax write costs more than
    # the tiny steps between two (docs/PERFORMANCE.md, "The test suite"), and where a run saves must
    # not change what it computes (the bit-for-bit check below says so too)
    at_end = ("--set", f"train.checkpoint_every={steps}")
    assert cli(*train_args(straight, steps, *bpe, *at_end)).returncode == 0  # the reference (and a warm compile cache)
    # each cycle starts a process (its imports, compiled-program loads): the test's cost; the seed
    # gives 2 kills in training and 1 in start-up (docs/PERFORMANCE.md, "The test suite")
    for _ in range(3):
        complete = steps_on_disk(str(killed))
        out = _start_and_kill(killed, steps, rng, bpe)
        resumed = re.search(r"resumed from .* at step (\d+)", out)
        if resumed:  # a restart resumes from the newest complete checkpoint
            assert complete and int(resumed.group(1)) == complete[-1], (complete, out)
    if not steps_on_disk(str(killed)):  # a slow machine: every kill came before the first checkpoint
        _start_and_kill(killed, steps, rng, bpe, after_checkpoint=True)
    complete = steps_on_disk(str(killed))
    assert complete, "no checkpoint survived a kill after one was written"
    done = cli(*train_args(killed, steps, *bpe, *at_end))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"resumed from {killed} at step {complete[-1]}" in done.stdout
    # bit for bit: the data order, its sampled segmentations, dropout keys and the state all come back
    assert max_diff(params_of(killed), params_of(straight)) == 0.0
    rows = [r["step"] for r in read_metrics(str(killed)) if r["split"] == "train"]
    assert rows == list(range(2, steps + 1, 2))  # no duplicated, no missing step
    assert tensorboard_steps(killed) == list(range(2, steps + 1, 2))


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    from nety_jax.config import load_config
    from nety_jax.training.loop import train
    workdir = tmp_path_factory.mktemp("two") / "run"
    # one layer of each kind: which step a damaged run falls back to, and which fields a refusal
    # names, do not depend on depth; the model's tracing and compiling in every command do
    cfg = load_config(TINY, ["train.steps=20", "train.checkpoint_every=10", "train.eval_every=1000",
                             "data.vocab_size=120", "train.keep_latest=3", *ONE_LAYER])
    train(cfg, str(workdir), **QUIET)
    assert steps_on_disk(str(workdir)) == [10, 20]
    return workdir


def _damage(run, kind):
    step = run / "checkpoints" / "20"
    data = sorted(glob.glob(str(step / "state" / "d" / "*")))
    if kind == "truncated file":
        with open(data[0], "r+b") as f:
            f.truncate(os.path.getsize(data[0]) // 2)
    elif kind == "missing file":
        os.remove(data[0])
    elif kind == "truncated _METADATA":
        path = step / "state" / "_METADATA"
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 3)
    elif kind == "deleted step folder":
        shutil.rmtree(step)
        return 10, None
    elif kind == "empty newer step folder":
        os.makedirs(run / "checkpoints" / "30")
        return 20, 30
    elif kind == "half-written step folder":
        shutil.copytree(step, run / "checkpoints" / "30.orbax-checkpoint-tmp-1790000000")
        os.remove(run / "checkpoints" / "30.orbax-checkpoint-tmp-1790000000" / "commit_success.txt")
        return 20, None
    return 10, 20


DAMAGE = ["truncated file", "missing file", "truncated _METADATA", "deleted step folder",
          "empty newer step folder", "half-written step folder"]
CLI_KINDS = ("truncated file", "empty newer step folder")


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_checkpoints_fall_back_to_the_newest_intact_step(two_checkpoints, tmp_path, kind):
    from nety_jax.serving.pretrained import load_pretrained
    run = tmp_path / "run"
    shutil.copytree(two_checkpoints, run)
    intact, damaged = _damage(run, kind)
    warnings = []
    assert load_pretrained(str(run), warn=warnings.append).step == intact
    assert len(warnings) == (damaged is not None)
    if damaged:
        assert f"checkpoints/{damaged} is damaged" in warnings[0] and f"using step {intact}" in warnings[0]
    if kind in CLI_KINDS:  # the commands share load_pretrained's fallback: two kinds suffice
        gen = cli("generate", "--checkpoint", str(run), "--prompt", "Bonjour !")
        assert gen.returncode == 0 and "Traceback" not in gen.stderr, gen.stderr
        assert len(gen.stderr.strip().splitlines()) == (damaged is not None), gen.stderr
        assert cli("export", "--checkpoint", str(run), "--out", str(tmp_path / "export")).returncode == 0
    resumed = cli(*train_args(run, 24, "--set", "train.keep_latest=3", *ONE_LAYER_SETS))
    assert resumed.returncode == 0, resumed.stderr
    assert f"at step {intact}" in resumed.stdout
    if damaged:  # moved aside for inspection, never deleted
        assert "moved to" in resumed.stdout + resumed.stderr
        assert glob.glob(str(run / "damaged" / f"{damaged}-*"))
    assert steps_on_disk(str(run))[-1] == 24


def test_no_intact_checkpoint_is_one_clear_error(two_checkpoints, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(two_checkpoints, run)
    for step in (10, 20):
        path = run / "checkpoints" / str(step) / "state" / "_METADATA"
        with open(path, "r+b") as f:
            f.truncate(10)
    for args in (["generate", "--checkpoint", str(run), "--prompt", "x"],
                 ["export", "--checkpoint", str(run), "--out", str(tmp_path / "e")],
                 train_args(run, 30, *ONE_LAYER_SETS)):
        one_line_error(cli(*args), "no intact checkpoint (damaged: 20")
    assert sorted(os.listdir(run / "checkpoints")) == ["10", "20"]  # nothing deleted or moved


@pytest.mark.parametrize("change, field", [
    ("model.d_model: 32", "model.d_model: checkpoint 32, requested 48"),
    ("model.enc_layers: 1", "model.enc_layers: checkpoint 1, requested 3"),
    ("model.memory: sequence", "model.memory: checkpoint 'sequence', requested 'pooled'"),
    ("model.vocab_size", "model.vocab_size: checkpoint"),
    ("arch", "model.arch: checkpoint 'hybrid', requested 'gpt'"),
])
def test_restoring_into_another_config_names_the_fields(two_checkpoints, tmp_path, change, field):
    import yaml
    run = tmp_path / "run"
    shutil.copytree(two_checkpoints, run)
    raw = yaml.safe_load((run / "config.yaml").read_text())
    if change == "arch":
        raw["model"] = {"arch": "gpt", "vocab_size": raw["model"]["vocab_size"], "max_len": 64, "d_model": 32,
                        "heads": 4, "layers": 2, "d_ff": 64}
        raw["data"]["seq_len"] = 32
    else:
        key = change.split(":")[0].split(".")[1]
        raw["model"][key] = {"d_model": 48, "enc_layers": 3, "memory": "pooled",
                             "vocab_size": raw["model"]["vocab_size"] + 5}[key]
    (run / "config.yaml").write_text(yaml.safe_dump(raw))
    for args in (["generate", "--checkpoint", str(run), "--prompt", "x"],
                 ["export", "--checkpoint", str(run), "--out", str(tmp_path / "e")],
                 ["quantize", "--checkpoint", str(run), "--out", str(tmp_path / "q")],
                 ["train", "--config", str(run / "config.yaml"), "--workdir", str(run), "--steps", "30",
                  "--no-progress"]):
        one_line_error(cli(*args), field)


def test_two_trainings_in_one_directory_are_refused(tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen([*CLI, *train_args(run, 2000)], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (run / "metrics.jsonl").exists():
            time.sleep(0.1)
        second = cli(*train_args(run, 2000))
        one_line_error(second, "is in use by another training process")
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)


def test_changed_data_and_settings_on_resume(tmp_path):
    small = tmp_path / "small.jsonl"
    small.write_text("".join(json.dumps({"input": f"bonjour {i}", "target": f"salut {i}"}) + "\n"
                             for i in range(40)), encoding="utf-8")
    run = tmp_path / "run"
    # one layer of each kind: what a resume refuses, keeps and states does not depend on depth
    args = lambda steps, *extra: train_args(run, steps, *ONE_LAYER_SETS, *extra)
    assert cli(*args(8)).returncode == 0
    config = (run / "config.yaml").read_text()
    # a different seed would move validation pairs into training: refused
    one_line_error(cli(*args(12, "--seed", "3")), "train.seed: saved 0, requested 3")
    # the tokenizer is fixed once a model was trained with it
    one_line_error(cli(*args(12, "--set", "data.vocab_size=150")), "data.vocab_size")
    assert (run / "config.yaml").read_text() == config  # nothing rewritten by a refusal
    # fewer steps than done: nothing to train, nothing rewritten
    done = cli(*args(4))
    assert done.returncode == 0 and "nothing to train" in done.stdout
    assert (run / "config.yaml").read_text() == config
    # another, smaller data file: a new data position, stated; then it trains on
    done = cli(*args(14, "--data", str(small), "--set", "train.batch_size=8"))
    assert done.returncode == 0, done.stderr
    assert "the training data changed" in done.stdout and "epoch 0" in done.stdout
    assert steps_on_disk(str(run))[-1] == 14


def test_a_failed_first_run_leaves_no_tokenizer_behind(tmp_path):
    few = tmp_path / "few.jsonl"
    few.write_text(json.dumps({"input": "a", "target": "b"}) + "\n", encoding="utf-8")
    run = tmp_path / "run"
    one_line_error(cli(*train_args(run, 4, "--data", str(few))), "training example for train.batch_size")
    assert not (run / "tokenizer.json").exists() and not (run / "config.yaml").exists()
    assert cli(*train_args(run, 4, *ONE_LAYER_SETS)).returncode == 0


def _no_big_files():
    resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))  # any file over 200 bytes: EFBIG
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def test_a_full_disk_at_start_is_one_clear_error(tmp_path):
    done = subprocess.run([*CLI, "--no-compile-cache", *train_args(tmp_path / "run", 4)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, preexec_fn=_no_big_files)
    one_line_error(done, "cannot write")
    one_line_error(cli(*train_args("/proc/nety-jax-run", 4)), "/proc/nety-jax-run")


def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    from nety_jax.config import load_config
    from nety_jax.errors import CheckpointError
    from nety_jax.serving.pretrained import load_pretrained
    from nety_jax.runs import checkpoints as ckpt
    from nety_jax.training.loop import train
    saves = []
    real_save = ckpt.save

    def failing_save(manager, step, *args, **kw):
        saves.append(step)
        if len(saves) == 2:
            raise OSError(28, "No space left on device", str(tmp_path / "run" / "checkpoints" / str(step)))
        return real_save(manager, step, *args, **kw)
    monkeypatch.setattr(ckpt, "save", failing_save)
    cfg = load_config(TINY, ["train.steps=12", "train.checkpoint_every=4", "train.eval_every=1000",
                             "data.vocab_size=120", *ONE_LAYER])  # which write fails does not depend on depth
    with pytest.raises(CheckpointError, match="No space left on device.*newest complete checkpoint is step 4"):
        train(cfg, str(tmp_path / "run"), **QUIET)
    assert steps_on_disk(str(tmp_path / "run")) == [4]
    assert load_pretrained(str(tmp_path / "run")).step == 4
