"""Every test runs with 4 fake CPU devices, so the multi-device paths are always exercised.

Compiled programs go to a persistent cache shared by this session's processes (the CLI
subprocesses inherit it), so a program is compiled once per suite run.

Cost rules (the whole suite has a time budget on CI's 2 cores, see README "Tests"): reuse the
session fixtures below instead of training again; run `nety-jax` through ``run_main`` in this
process unless the process itself is what a test checks (exit on a signal, a lock held by
another process, a fresh interpreter); ``HEAVY`` lists the costliest files so xdist starts them
first.
"""
import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# LLVM's optimizations of XLA's CPU code cost more than the tiny models' steps they speed up: at
# -O0 a test compiles in about 60% of the CPU time (docs/PERFORMANCE.md, "The test suite"). XLA's
# own (HLO) passes still run; only the CPU machine code is less optimized. CPU runs only, and an
# opt level already in XLA_FLAGS wins (XLA_FLAGS=--xla_backend_optimization_level=2 tests as shipped).
# Subprocesses inherit it; a test that sets XLA_FLAGS for one appends TEST_XLA_FLAGS.
TEST_XLA_FLAGS = "" if os.environ["JAX_PLATFORMS"] != "cpu" or "xla_backend_optimization_level" in \
    os.environ.get("XLA_FLAGS", "") else "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           f" --xla_force_host_platform_device_count=4 {TEST_XLA_FLAGS}").strip()
os.environ.setdefault("NETY_JAX_COMPILE_CACHE", tempfile.mkdtemp(prefix="nety-jax-test-cache-"))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.environ["NETY_JAX_COMPILE_CACHE"])
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.05")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import io  # noqa: E402
import pathlib  # noqa: E402
import subprocess  # noqa: E402
from contextlib import redirect_stderr, redirect_stdout  # noqa: E402

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
TINY = str(CONFIGS / "tiny.yaml")
PARITY = str(CONFIGS / "nety_parity.yaml")
GPT_TINY = str(CONFIGS / "gpt_tiny.yaml")
RNN_LM = str(CONFIGS / "rnn_lm.yaml")
QUIET = {"progress": False, "log": lambda *_: None}


def run_main(*argv) -> subprocess.CompletedProcess:
    """`nety-jax ARGV` in this process (no interpreter start, no JAX import, programs already
    compiled here reused): the exit code and what it printed, as subprocess.run returns them."""
    from nety_jax.cli import main
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:  # argparse's usage errors
            code = e.code
    return subprocess.CompletedProcess(list(argv), code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def tiny_cfg():
    from nety_jax.config import load_config
    return load_config(TINY)


def _trained_once(tmp_path_factory, name: str, path: str, overrides: list) -> tuple:
    """Trains ``path`` with ``overrides`` once per test session: under xdist the first worker to
    ask trains while the others wait on a lock, then all read the same run directory (its tests
    only read it). Returns (workdir, the training's summary)."""
    from nety_jax.config import load_config
    from nety_jax.training.loop import train
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # one process: nothing to share
        workdir = str(tmp_path_factory.mktemp(name))
        return workdir, train(load_config(path, overrides), workdir, **QUIET)
    import fcntl
    import json
    root = tmp_path_factory.getbasetemp().parent  # this session's folder, shared by its workers
    workdir, done = root / f"shared-{name}", root / f"shared-{name}.json"
    with open(root / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            summary = train(load_config(path, overrides), str(workdir), **QUIET)
            done.write_text(json.dumps(summary, default=float))
    return str(workdir), json.loads(done.read_text())


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A tiny hybrid trained briefly on the embedded corpus (shared by the CLI tests)."""
    return _trained_once(tmp_path_factory, "run", TINY, ["train.steps=40", "train.eval_every=40",
                                                         "train.checkpoint_every=40", "data.vocab_size=120"])[0]


@pytest.fixture(scope="session")
def trained_gpt(tmp_path_factory):
    """The tiny GPT trained on the shipped text (shared by the language-model tests)."""
    return _trained_once(tmp_path_factory, "gpt", GPT_TINY, ["train.steps=200"])


@pytest.fixture(scope="session")
def trained_rnn_lm(tmp_path_factory):
    return _trained_once(tmp_path_factory, "rnn_lm", RNN_LM, ["train.steps=200", "model.hidden=128"])


# The costliest files, costliest first (per-file times: docs/PERFORMANCE.md, "The test suite"). With
# `--dist loadscope --no-loadscope-reorder` (make test) xdist hands whole files to its workers in
# this order, each worker taking the next when it is free: the long files start first and the
# short ones fill the gaps, instead of a long file starting last and running alone.
HEAVY = ["test_reliability.py", "test_hf.py", "test_gpu_check.py", "test_mesh.py", "test_mesh_restore.py", "test_cli.py",
         "test_multihost.py", "test_training.py", "test_writers.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(HEAVY)}
    items.sort(key=lambda item: rank.get(item.path.name, len(HEAVY)))  # stable: the rest keep their order
