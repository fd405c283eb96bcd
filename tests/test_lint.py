"""pyflakes' checks (ruff's F rules, configured in pyproject.toml) over the package, the scripts and
the tests: an unused import or an undefined name fails here rather than in review."""
import subprocess
import sys

import pytest

from conftest import ROOT


def test_no_unused_imports_or_undefined_names():
    pytest.importorskip("ruff")  # in the test extra; the smoke's venv goes without
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "nety_jax", "scripts", "tests"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
