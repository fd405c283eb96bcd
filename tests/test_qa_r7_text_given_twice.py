"""QA round 7: a text file given twice to `train --text` / `prepare --text`."""
import os

import pytest

from conftest import GPT_TINY, run_main


def _text(path):
    path.write_text("".join(f"le chien {i} dort dans la maison.\n" for i in range(40)), encoding="utf-8")
    return path


@pytest.mark.parametrize("second", ["same", "dot", "link"])
def test_a_text_file_given_twice_is_refused(tmp_path, second, monkeypatch):
    """`--text a.txt a.txt` trained on every line twice and, the validation split being the last
    lines of all the files together, validated on lines of the first copy it had trained on: a
    flattered validation loss, without a word. A file given twice (by another spelling or a link
    too) is one line naming it; nothing read, nothing written."""
    from nety_jax.data.text import read_text
    from nety_jax.errors import DataError
    a = _text(tmp_path / "a.txt")
    monkeypatch.chdir(tmp_path)
    other = {"same": str(a), "dot": "./a.txt", "link": str(tmp_path / "b.txt")}[second]
    if second == "link":
        os.symlink(a, other)
    with pytest.raises(DataError, match="given twice"):
        read_text([str(a), other])
    for command, out in (("train", "--workdir"), ("prepare", "--out")):
        result = run_main(command, "--config", GPT_TINY, "--text", a, other, out, tmp_path / command,
                          "--no-progress", "--set", "data.seq_len=16")
        assert result.returncode == 2 and "given twice" in result.stderr, (command, result.stderr)
        assert result.stderr.count("\n") == 1, result.stderr
        assert not (tmp_path / command / "checkpoints").exists()


def test_two_files_are_read_in_order(tmp_path):
    from nety_jax.data.text import read_text
    a = _text(tmp_path / "a.txt")
    b = tmp_path / "b.txt"
    b.write_text("une autre ligne.\n", encoding="utf-8")
    assert read_text([str(a), str(b)]).lines[-1] == "une autre ligne."
