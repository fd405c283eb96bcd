"""QA round 4: config files that hold nothing."""
import pytest

from conftest import run_main


@pytest.mark.parametrize("text", ["", "\n\n", "# my settings, to fill in\n", "\ufeff", "---\n"])
def test_a_config_file_that_holds_no_settings_is_one_line(tmp_path, text):
    """An empty config file (truncated, an editor's new file saved before it was filled) was read
    as no settings at all: `train --config it` trained the default 44 M-parameter hybrid on the
    default corpus without a word. `{}` (an explicit empty mapping) still means the defaults."""
    path = tmp_path / "my config.yaml"
    path.write_text(text, encoding="utf-8")
    for argv in (["info", "--config", path], ["train", "--config", path, "--workdir", tmp_path / "run"]):
        result = run_main(*argv)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert f"{path}: holds no settings" in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()
    path.write_text("{}\n")
    assert run_main("info", "--config", path).returncode == 0
