"""export-torch reads files import-torch left in the run (torch_meta.json, torch_pe.npy): damaged,
they are a one-line error naming the file, never a traceback."""
import shutil

import pytest

pytest.importorskip("torch")

from conftest import run_main  # noqa: E402
from test_torch_io import trained_nety  # noqa: E402, F401  (the module fixture: a NETY import)


@pytest.mark.parametrize("name, content", [("torch_meta.json", "{not json"), ("torch_meta.json", "[1, 2]"),
                                           ("torch_pe.npy", "not an array")])
def test_a_damaged_side_file_is_one_error_naming_it(trained_nety, tmp_path, name, content):  # noqa: F811
    run = tmp_path / "run"
    shutil.copytree(trained_nety[3], run)
    (run / name).write_text(content)
    done = run_main("export-torch", "--checkpoint", run, "--out", tmp_path / "nety.pt")
    assert done.returncode == 2 and name in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1
