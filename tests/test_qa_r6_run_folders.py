"""QA round 6: a run directory whose parts are not what a run holds."""
import os
import shutil

import pytest
from conftest import run_main


def _files(path) -> dict:
    return {name: open(os.path.join(path, name), "rb").read() for name in sorted(os.listdir(path))
            if os.path.isfile(os.path.join(path, name)) and name != ".lock"}  # the training lock


@pytest.mark.parametrize("kind", ["file", "dangling link"])
def test_a_checkpoints_that_is_not_a_folder_is_refused_at_start(trained_run, tmp_path, kind):
    """A run whose `checkpoints` was a regular file (or a link to nothing) read as "no checkpoint":
    `train` retrained the tokenizer over the run's own, trained from step 0 and failed at its first
    save ("Not a directory"); `generate` said "no checkpoint found". Every reader refuses it at
    start, one line naming the path, and nothing in the run changes."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns(".lock"))
    shutil.rmtree(run / "checkpoints")
    if kind == "file":
        (run / "checkpoints").write_text("notes\n")
    else:
        os.symlink(tmp_path / "gone", run / "checkpoints")
    before = _files(run)
    r = run_main("train", "--config", run / "config.yaml", "--workdir", run, "--steps", "44", "--no-progress")
    assert r.returncode == 2, r.stdout + r.stderr
    what = "a regular file" if kind == "file" else "a link to"
    assert f"{run / 'checkpoints'}: is not a directory ({what}" in r.stderr
    assert "Traceback" not in r.stderr and "step 2" not in r.stdout
    assert _files(run) == before
    r = run_main("generate", "--checkpoint", run, "--prompt", "Bonjour")
    assert r.returncode == 2 and "is not a directory" in r.stderr, r.stderr


def test_a_damaged_that_is_not_a_folder_is_refused_at_start(trained_run, tmp_path):
    """The same for `damaged/`, where training moves a damaged newest checkpoint: a regular file
    there failed only after the data was read, with "cannot write (File exists); the newest
    complete checkpoint is step 40", naming as complete the step it had just found damaged."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns(".lock"))
    (run / "damaged").write_text("notes\n")
    newest = max(int(n) for n in os.listdir(run / "checkpoints") if n.isdigit())
    (run / "checkpoints" / str(newest) / "state" / "_METADATA").unlink()
    before = _files(run)
    r = run_main("train", "--config", run / "config.yaml", "--workdir", run, "--steps", "44", "--no-progress")
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"{run / 'damaged'}: is not a directory (a regular file)" in r.stderr
    assert "Traceback" not in r.stderr and "data:" not in r.stdout
    assert _files(run) == before and str(newest) in os.listdir(run / "checkpoints")
