"""QA round 3: resuming a run with settings it cannot honour."""
import shutil

from conftest import GPT_TINY, run_main


def test_a_resume_with_another_validation_split_is_refused(trained_gpt, tmp_path):
    """`--set data.val_fraction=0.5` on a run held out with 0.1 resumed: the new validation split held
    lines already trained on (its loss, and the best checkpoint chosen by it, flattered the model),
    while another train.seed, which also moves the split, was refused. Refused the same way now."""
    workdir = tmp_path / "run"
    shutil.copytree(trained_gpt[0], workdir)
    config = (workdir / "config.yaml").read_text()
    result = run_main("train", "--config", GPT_TINY, "--workdir", workdir, "--steps", "201", "--no-progress",
                      "--set", "data.val_fraction=0.5")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "data.val_fraction: saved 0.1, requested 0.5 (the validation split depends on it)" in result.stderr
    assert (workdir / "config.yaml").read_text() == config
    result = run_main("train", "--config", GPT_TINY, "--workdir", workdir, "--steps", "200", "--no-progress",
                      "--set", "data.val_fraction=0.1")  # the default, spelled out: the same split
    assert result.returncode == 0, result.stderr
