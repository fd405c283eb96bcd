"""The data readers under property-based fuzzing: every line is read or reported as file:line with
a reason; never an uncaught exception, never a hang."""
import gzip
import json
import os

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from nety_jax.config import DataConfig
from nety_jax.data.pairs import read_pairs
from nety_jax.data.text import read_text
from nety_jax.errors import DataError

FUZZ = settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
                           max_leaves=8)
pair_lines = st.one_of(
    st.binary(max_size=200),  # random bytes, NULs, invalid UTF-8
    st.builds(lambda v: json.dumps(v).encode(), json_values),  # random JSON
    st.builds(lambda a, b: json.dumps({"input": a, "target": b}).encode(), json_values, json_values),
    st.builds(lambda a, b: json.dumps({"input": a, "target": b}, ensure_ascii=False).encode("utf-8"),
              st.text(), st.text()),
    st.builds(lambda a, b: f"{a}\t{b}".encode("utf-8", "surrogatepass"), st.text(), st.text()),
    st.sampled_from([b"", b"   ", b"\t", b"\x00", b"\xef\xbb\xbf", "é".encode("latin-1"), b"{" * 5000,
                     b'{"input": "' + b"x" * 200_000 + b'", "target": "y"}']),  # huge lines, deep nesting
)


def _file(tmp_path, name, lines, ending, bom, compress):
    raw = (b"\xef\xbb\xbf" if bom else b"") + ending.join(lines)
    path = tmp_path / name
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return str(path)


def _check(error: DataError, path: str) -> None:
    message = str(error)
    assert message.startswith(path), message
    assert len(message.splitlines()) == 1 and len(message) < 2000, message


@FUZZ
@given(lines=st.lists(pair_lines, max_size=12), ending=st.sampled_from([b"\n", b"\r\n"]), bom=st.booleans(),
       compress=st.booleans(), fmt=st.sampled_from(["pairs.jsonl", "pairs.tsv"]))
def test_pairs_are_read_or_reported_by_line(tmp_path, lines, ending, bom, compress, fmt):
    path = _file(tmp_path, fmt + (".gz" if compress else ""), lines, ending, bom, compress)
    for skip_bad in (False, True):
        try:
            report = read_pairs(path, DataConfig(), skip_bad=skip_bad)
        except DataError as e:
            _check(e, path)
            continue
        assert report.pairs and all(isinstance(a, str) and a and isinstance(b, str) and b for a, b in report.pairs)


@FUZZ
@given(lines=st.lists(st.one_of(st.binary(max_size=200), st.text().map(str.encode)), max_size=12),
       ending=st.sampled_from([b"\n", b"\r\n"]), bom=st.booleans(), compress=st.booleans())
def test_text_is_read_or_reported_by_line(tmp_path, lines, ending, bom, compress):
    path = _file(tmp_path, "text.txt" + (".gz" if compress else ""), lines, ending, bom, compress)
    for skip_bad in (False, True):
        try:
            report = read_text([path], skip_bad=skip_bad)
        except DataError as e:
            _check(e, path)
            continue
        assert report.lines and all(line.strip() == line and line for line in report.lines)


@pytest.mark.parametrize("make, message", [
    (lambda p: os.makedirs(p), "is a directory"),
    (lambda p: None, "not found"),
    (lambda p: os.mkfifo(p), "not a regular file"),
    (lambda p: open(p, "wb").write(b"\x1f\x8b" + b"not gzip at all"), "damaged gzip stream"),
])
def test_things_that_are_not_readable_files(tmp_path, make, message):
    path = str(tmp_path / "data.jsonl")
    make(path)
    for reader in (lambda: read_pairs(path, DataConfig()), lambda: read_text([path])):
        with pytest.raises(DataError, match=message) as err:
            reader()
        _check(err.value, path)


def test_an_unreadable_file(tmp_path):
    path = "/proc/self/mem"  # a regular file that fails to read, even for root
    with pytest.raises(DataError, match="cannot read"):
        read_text([path])
