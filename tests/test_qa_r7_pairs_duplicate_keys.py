"""QA round 7: a JSONL pair that names its input or target twice."""
import json

import pytest


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("line", [
    '{"input": "bonjour", "target": "salut", "input": "au revoir"}',
    '{"input": "bonjour", "target": "salut", "target": "bonsoir"}',
    '{"input": "bonjour", "target": "salut", "\\u0069nput": "au revoir"}',  # the same key, escaped
])
def test_a_key_given_twice_is_named_not_overwritten(tmp_path, line):
    """`{"input": "a", "target": "b", "input": "c"}` trained the pair ("c", "b") without a word:
    Python's JSON reader keeps a repeated key's last value (PyYAML did the same with a config's
    section given twice, refused since QA round 3). It is `file:line` naming the key; with
    `--skip-bad` it is skipped and counted."""
    from nety_jax.config import DataConfig
    from nety_jax.data.pairs import read_pairs
    from nety_jax.errors import DataError
    good = [json.dumps({"input": f"question {i}", "target": f"reponse {i}"}) for i in range(3)]
    path = _write(tmp_path / "pairs.jsonl", good + [line] + good)
    with pytest.raises(DataError, match=r"pairs.jsonl:4: key '(input|target)' is given twice"):
        read_pairs(path, DataConfig())
    report = read_pairs(path, DataConfig(), skip_bad=True)
    assert len(report.pairs) == 6 and report.skipped == 1 and "given twice" in report.first_error


def test_keys_and_words_that_repeat_elsewhere_are_read(tmp_path):
    """Only the two keys matter: a value holding the word, a nested object or another key repeated
    are read as before."""
    from nety_jax.config import DataConfig
    from nety_jax.data.pairs import read_pairs
    lines = ['{"input": "input input", "target": "the target"}',
             '{"input": "a", "target": "b", "meta": {"input": 1}, "x": 1, "x": 2}',
             '{"input": "caf\\u00e9", "target": "th\\u00e9"}']
    report = read_pairs(_write(tmp_path / "pairs.jsonl", lines), DataConfig())
    assert report.pairs == [("input input", "the target"), ("a", "b"), ("café", "thé")]
