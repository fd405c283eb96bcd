"""Every test runs with 4 fake CPU devices, so the multi-device paths are always exercised.

Compiled programs go to a persistent cache shared by this session's processes (the CLI
subprocesses inherit it), so a program is compiled once per suite run.
"""
import os
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("NETY_JAX_COMPILE_CACHE", tempfile.mkdtemp(prefix="nety-jax-test-cache-"))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.environ["NETY_JAX_COMPILE_CACHE"])
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.05")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pathlib  # noqa: E402

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
TINY = str(CONFIGS / "tiny.yaml")
PARITY = str(CONFIGS / "nety_parity.yaml")
GPT_TINY = str(CONFIGS / "gpt_tiny.yaml")
RNN_LM = str(CONFIGS / "rnn_lm.yaml")
QUIET = {"progress": False, "log": lambda *_: None}


@pytest.fixture(scope="session")
def tiny_cfg():
    from nety_jax.config import load_config
    return load_config(TINY)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A tiny hybrid trained briefly on the embedded corpus (shared by the CLI tests)."""
    from nety_jax.config import load_config
    from nety_jax.training.loop import train
    workdir = str(tmp_path_factory.mktemp("run"))
    cfg = load_config(TINY, ["train.steps=40", "train.eval_every=40", "train.checkpoint_every=40",
                             "data.vocab_size=120"])
    train(cfg, workdir, **QUIET)
    return workdir


@pytest.fixture(scope="session")
def trained_gpt(tmp_path_factory):
    """The tiny GPT trained on the shipped text (shared by the language-model tests)."""
    from nety_jax.config import load_config
    from nety_jax.training.loop import train
    workdir = str(tmp_path_factory.mktemp("gpt"))
    cfg = load_config(GPT_TINY, ["train.steps=200"])
    summary = train(cfg, workdir, **QUIET)
    return workdir, summary


@pytest.fixture(scope="session")
def trained_rnn_lm(tmp_path_factory):
    from nety_jax.config import load_config
    from nety_jax.training.loop import train
    workdir = str(tmp_path_factory.mktemp("rnn_lm"))
    cfg = load_config(RNN_LM, ["train.steps=200", "model.hidden=128"])
    summary = train(cfg, workdir, **QUIET)
    return workdir, summary
