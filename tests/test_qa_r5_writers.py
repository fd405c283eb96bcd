"""QA round 5: the writers' guard meets outputs it does not know."""
import pytest

from nety_jax.errors import OutputError
from nety_jax.runs import guard
from nety_jax.runs.kinds import WRITERS
from nety_jax.runs.manifest import write_marker


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize("overwrite", [False, True])
def test_an_output_of_a_kind_this_version_does_not_know_is_refused_in_one_line(tmp_path, writer, overwrite):
    """A directory whose marker names a kind this nety-jax does not know (a newer version's output,
    or a hand-edited marker) made every writer fail with `KeyError: 'gguf'` and a traceback, as
    --out, as --workdir and as an ancestor of the path. It is someone's output: refused, named."""
    other = tmp_path / "newer"
    other.mkdir()
    (other / "weights.bin").write_bytes(b"x")
    write_marker(str(other), "gguf", "convert", sealed=False)
    target = other / "out.pt" if WRITERS[writer].is_file else other
    with pytest.raises(OutputError, match=r"a kind this version does not know \('gguf'\) \(convert\)"):
        guard.claim(str(target), writer, overwrite=overwrite)
    with pytest.raises(OutputError, match="is inside .*newer, which is a nety-jax output of a kind"):
        guard.claim(str(other / "sub" / "out"), writer, overwrite=overwrite)
    assert sorted(p.name for p in other.iterdir()) == ["nety-jax.json", "weights.bin"]
