"""Every test runs with 4 fake CPU devices, so the multi-device paths are always exercised."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.yaml")
PARITY = str(ROOT / "configs" / "nety_parity.yaml")


@pytest.fixture(scope="session")
def tiny_cfg():
    from nety_jax.config import load_config
    return load_config(TINY)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A tiny model trained briefly on the embedded corpus (shared by the CLI tests)."""
    from nety_jax.config import load_config
    from nety_jax.train import train
    workdir = str(tmp_path_factory.mktemp("run"))
    cfg = load_config(TINY, ["train.steps=40", "train.eval_every=40", "train.checkpoint_every=40",
                             "data.vocab_size=120"])
    train(cfg, workdir, progress=False, log=lambda *_: None)
    return workdir
