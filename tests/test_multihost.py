"""Multi-host for real: 2 processes on localhost (JAX's distributed runtime, gloo CPU collectives,
2 fake devices each) against 1 process over 4 devices (this one: `nety-jax` through run_main)."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from nety_jax.runs.checkpoints import steps_on_disk
from conftest import ONE_LAYER, ROOT, TEST_XLA_FLAGS, TINY, run_main

pytestmark = pytest.mark.slow


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(workdir, steps, extra=()):
    return [sys.executable, "-m", "nety_jax.cli", "train", "--config", TINY, "--workdir", str(workdir),
            "--steps", str(steps), "--no-progress", "--parallel", "shard_map", "--set", "train.batch_size=16",
            "--set", "train.log_every=1", "--set", "train.checkpoint_every=2", "--set", "train.eval_every=1000",
            "--set", "data.vocab_size=120", "--set", "train.warmup_steps=1", "--set", "model.dropout=0.1",
            "--set", "train.optimizer=adam", "--set", "train.eps=1e-6", "--set", "train.bleu_samples=0",
            *[a for o in ONE_LAYER for a in ("--set", o)], *extra]


# a rate that falls with every step but not with train.steps (cosine's length): the kill/resume
# test's runs of 2, 10 and 12 steps in this process are one program, compiled once
RSQRT = ("--set", "train.schedule=warmup_rsqrt")


def _env(devices: int, process: int = None, port: int = None, cache=None) -> dict:
    env = {**os.environ, **({"NETY_JAX_COMPILE_CACHE": str(cache)} if cache else {}), "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} {TEST_XLA_FLAGS}",
           "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}  # a killed process's lines too
    for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(key, None)
    if process is not None:
        env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(process))
    return env


def two_processes(workdir, steps, kill_after=None, extra=(), cache=None):
    port = _port()
    procs = [subprocess.Popen(_args(workdir, steps, extra), cwd=ROOT, env=_env(2, i, port, cache), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    if kill_after is not None:  # kill -9 both once a checkpoint after step kill_after exists
        deadline = time.time() + 240
        while time.time() < deadline and max(steps_on_disk(str(workdir)) or [0]) <= kill_after:
            time.sleep(0.05)
        for p in procs:
            p.send_signal(signal.SIGKILL)
    outs = [p.communicate(timeout=300)[0] for p in procs]
    return [p.returncode for p in procs], outs


def one_process(workdir, steps, extra=()):
    """The same command in this process: one process over 4 devices, as conftest sets them up (no
    interpreter start, no import, the programs already compiled here reused)."""
    assert jax.process_count() == 1 and jax.device_count() == 4
    done = run_main(*_args(workdir, steps, extra)[3:])
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _params(workdir):
    from nety_jax.serving.pretrained import load_pretrained
    return jax.device_get(load_pretrained(str(workdir), warn=lambda *_: None).variables)


def _max_diff(a, b):
    return max(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))), a, b)))


def test_two_processes_equal_one_process_resume_after_kill_and_across(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    # both runs start from one 1-process checkpoint at step 2 (written here), which the 2-process
    # job resumes: a 1-process checkpoint read by 2 processes
    one_process(two, 2, RSQRT)
    shutil.copytree(two, one)
    # kill -9 both processes once a checkpoint of their own exists; the same command resumes them.
    # Their compilation cache stays empty: on jax 0.12.1 a 2-process CPU program read back from it
    # hung in its first all-reduce (the resumed job waited forever), so such jobs compile afresh
    cache = tmp_path / "cache"
    codes, outs = two_processes(two, 10, kill_after=2, extra=RSQRT, cache=cache)
    assert codes == [-signal.SIGKILL] * 2 and all(f"resumed from {two} at step 2" in o for o in outs), outs
    complete = steps_on_disk(str(two))
    assert complete and 2 < complete[-1] < 10, complete
    codes, outs = two_processes(two, 10, extra=RSQRT, cache=cache)
    assert codes == [0, 0] and all(f"at step {complete[-1]}" in o for o in outs), (complete, outs)
    assert not cache.exists() or not any(cache.iterdir()), sorted(p.name for p in cache.iterdir())
    one_process(one, 10, RSQRT)
    # the same global batch, mesh and math (and the resumed run continues exactly); only the
    # order of cross-process sums differs, which moves BatchNorm's running statistics by up to
    # ~2e-5 over 10 steps (seen 1.6e-5 on jax 0.12, 3.3e-5 on 0.10.2); a wrong resume moves 0.5
    assert _max_diff(_params(two), _params(one)) < 1e-4
    # a 2-process checkpoint resumes in 1 process
    assert "at step 10" in one_process(two, 12, RSQRT)
    assert steps_on_disk(str(two))[-1] == 12


def test_two_processes_on_prepared_shards_equal_one_process(tmp_path):
    """`train --data DIR` over 2 processes: each reads only its rows of every global batch from the
    shards (a LocalBatch), and the run equals one process's (a resume on another process count is
    tested at the index level in test_prepared.py)."""
    pytest.importorskip("grain")
    from nety_jax.config import load_config
    from nety_jax.data.pairs import default_corpus_path
    from nety_jax.training.prepare_data import prepare_data
    data = str(tmp_path / "prepared")
    prepare_data(load_config(TINY, ["data.vocab_size=120"]), [default_corpus_path()], data, workers=1,
                 per_shard=700, log=lambda *_: None, progress=False)
    two, one = tmp_path / "two", tmp_path / "one"
    codes, outs = two_processes(two, 4, extra=("--data", data))
    assert codes == [0, 0], outs
    assert all(f"process {i} of 2 reads its 8 rows of every batch" in out for i, out in enumerate(outs)), outs
    one_process(one, 4, extra=("--data", data))
    assert _max_diff(_params(two), _params(one)) < 1e-5
