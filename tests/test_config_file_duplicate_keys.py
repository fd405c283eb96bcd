"""QA round 3: config files whose YAML says a thing twice."""
from conftest import run_main


def test_a_key_given_twice_in_a_config_file_is_one_line_naming_it(tmp_path):
    """PyYAML keeps the last of two equal keys: a second `train:` section dropped the first's
    `steps: 7` and trained the default 2,000 steps, without a word."""
    from nety_jax.config import load_config
    for text, line, key in (("train:\n  steps: 7\ntrain:\n  seed: 3\n", 3, "train"),
                            ("train:\n  steps: 7\n  seed: 1\n  steps: 9\n", 4, "steps")):
        path = tmp_path / "c.yaml"
        path.write_text(text, encoding="utf-8")
        result = run_main("info", "--config", path)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert f"c.yaml:{line}: invalid YAML ('{key}' is given twice" in result.stderr, result.stderr
    path.write_text("train:\n  <<: {steps: 7, seed: 2}\n  seed: 9\n  warmup_steps: 1\n", encoding="utf-8")
    cfg = load_config(str(path))  # a merge key's values are overridden by the mapping's own: allowed
    assert (cfg.train.steps, cfg.train.seed) == (7, 9)
