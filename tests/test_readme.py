"""README's snippets run as written, and the package's public API is what it says."""
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, run_main

README = (ROOT / "README.md").read_text(encoding="utf-8")
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


@pytest.fixture(scope="module")
def readme_dir(trained_run, tmp_path_factory):
    """A working directory like a user's checkout: configs/ and a trained runs/demo."""
    cwd = tmp_path_factory.mktemp("readme")
    os.symlink(ROOT / "configs", cwd / "configs")
    shutil.copytree(trained_run, cwd / "runs" / "demo")
    return cwd


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_snippets_run_as_written(readme_dir, index, monkeypatch):
    """Each snippet as a script in a user's directory, run in this process (a namespace of its
    own; no interpreter start or JAX import, programs compiled here reused): what it imports from
    nety_jax still goes through the package's lazy names (a fresh interpreter imports the package
    in test_public_api_version_and_help)."""
    assert len(PYTHON_BLOCKS) >= 2
    monkeypatch.chdir(readme_dir)
    code = compile(PYTHON_BLOCKS[index], f"README.md, python block {index}", "exec")
    exec(code, {"__name__": "__main__"})


def test_info_lines_of_the_readme(monkeypatch):
    monkeypatch.chdir(ROOT)
    for line in ("nety-jax info --config configs/gpt2_124m.yaml", "nety-jax info --config configs/nety_parity.yaml "
                 "--set model.vocab_size=1000"):
        assert line.split(" --set")[0] in README
        done = run_main(*line.split()[1:])
        assert done.returncode == 0 and ("163,009,536" in done.stdout or "32,775,784" in done.stdout)


def test_public_api_version_and_help():
    import nety_jax
    from nety_jax import generate, load_pretrained, train
    assert callable(train) and callable(generate) and callable(load_pretrained)
    assert {"train", "load_pretrained", "load_exported", "load_config", "generate"} <= set(dir(nety_jax))
    done = subprocess.run([sys.executable, "-m", "nety_jax.cli", "--version"], capture_output=True, text=True)
    assert done.stdout.strip() == f"nety-jax {nety_jax.__version__}"
    text = subprocess.run([sys.executable, "-c", "import nety_jax; help(nety_jax)"], capture_output=True,
                          text=True, env={**os.environ, "PAGER": "cat"}).stdout
    assert "load_pretrained" in text and "train(" in text
