"""QA round 4: the guard's outputs while a training uses them."""
import os

import pytest

from conftest import GPT_TINY, QUIET


class _Stop(Exception):
    pass


def test_an_importer_cannot_overwrite_a_run_a_training_is_starting_in(tmp_path, monkeypatch):
    """`train --workdir RUN` where RUN is an import (import-hf / import-torch wrote it) marks RUN
    as its own only once its setup has restored the weights; meanwhile `import-hf --overwrite RUN`
    replaced the directory under the starting training (its weights, tokenizer and config swapped
    for others). The training now holds RUN from its first check to its end."""
    import nety_jax.training.loop as loop
    from nety_jax.config import load_config
    from nety_jax.errors import OutputError
    from nety_jax.runs import guard
    from nety_jax.runs.manifest import write_marker

    run = tmp_path / "imported"
    run.mkdir()
    (run / "config.yaml").write_text("model:\n  arch: gpt\n")
    write_marker(str(run), "run", "import-hf", sealed=False)
    attempts = []

    def overwrite_meanwhile(cfg, workdir, *args, **kwargs):  # the training's setup, before it marks RUN
        try:
            with guard.output(workdir, "import-hf", overwrite=True) as tmp:  # what import-hf --overwrite runs
                open(os.path.join(tmp, "config.yaml"), "w").write("model:\n  arch: gpt\n  layers: 9\n")
            attempts.append("replaced")
        except OutputError as e:
            attempts.append(str(e))
        raise _Stop

    monkeypatch.setattr(loop, "prepare", overwrite_meanwhile)
    with pytest.raises(_Stop):
        loop.train(load_config(GPT_TINY), str(run), **QUIET)
    assert attempts and "is in use" in attempts[0] and "trains in it" in attempts[0], attempts
    assert (run / "config.yaml").read_text() == "model:\n  arch: gpt\n"
    # the training over, the importer may replace its own output again
    with guard.output(str(run), "import-hf", overwrite=True) as tmp:
        open(os.path.join(tmp, "config.yaml"), "w").write("model:\n  arch: gpt\n  layers: 9\n")
    assert "layers: 9" in (run / "config.yaml").read_text()


def test_an_interrupted_overwrite_leaves_one_whole_output(tmp_path, monkeypatch):
    """`--overwrite` renamed the earlier output aside, then the new one into place: a Ctrl-C (or a
    kill) between the two left no output at all, the earlier one hidden in a `.NAME.old-*` folder
    nothing reads. The two directories are now swapped in one step."""
    from nety_jax.runs import guard
    out = tmp_path / "export"
    for text in ("first", "second"):
        with guard.output(str(out), "export", overwrite=True) as tmp:
            open(os.path.join(tmp, "generate.bin"), "w").write(text)
    calls = []
    real = os.replace

    def interrupted(src, dst):  # Ctrl-C right after the earlier output is renamed aside
        if calls:
            raise KeyboardInterrupt
        real(src, dst)
        if os.fspath(src) == str(out):
            calls.append(dst)

    monkeypatch.setattr(guard.os, "replace", interrupted)
    try:
        with guard.output(str(out), "export", overwrite=True) as tmp:
            open(os.path.join(tmp, "generate.bin"), "w").write("third")
    except KeyboardInterrupt:
        pass
    monkeypatch.undo()
    assert (out / "generate.bin").read_text() in ("second", "third")
    assert sorted(os.listdir(tmp_path)) == ["export"]  # no staging or .old- folder left
