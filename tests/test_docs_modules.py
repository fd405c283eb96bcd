"""docs/ARCHITECTURE.md's module table against the tree: every module of the package and every
script is named in its folder's row, and every file a row names exists."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"


def table_rows(text: str) -> dict:
    """``{first cell: row}`` of the "## Modules" table."""
    table = text[text.index("## Modules"):]
    table = table[:table.index("\n## ", 1)]
    return {m.group(1): line for line in table.splitlines() if (m := re.match(r"\| (`[^|]+`)", line))}


def row_of(rows: dict, rel: pathlib.Path) -> str:
    """The row of a package file: its folder's (``layers/``), else the row naming the file."""
    key = f"`{rel.parts[0]}/`" if len(rel.parts) > 1 else f"`{rel.name}`"
    return next((row for first, row in rows.items() if key in first), "")


def unlisted(root: pathlib.Path, text: str) -> list:
    """Package modules and scripts their row does not name (a package's ``__init__.py`` aside)."""
    rows = table_rows(text)
    package = root / "nety_jax"
    found = []
    for path in sorted(package.rglob("*.py")) + sorted(package.rglob("*.cc")):
        rel = path.relative_to(package)
        if path.name == "__init__.py" and len(rel.parts) > 1:
            continue
        if f"`{path.name}`" not in row_of(rows, rel):
            found.append(f"nety_jax/{rel.as_posix()}")
    scripts = row_of(rows, pathlib.Path("scripts", "x"))
    for path in sorted((root / "scripts").glob("*.py")) + sorted((root / "scripts").glob("*.sh")):
        if f"`{path.name}`" not in scripts:
            found.append(f"scripts/{path.name}")
    return found


def stale(root: pathlib.Path, text: str) -> list:
    """Files the table names that exist nowhere in the package or scripts/."""
    named = {n for row in table_rows(text).values() for n in re.findall(r"`([\w.]+\.(?:py|cc|sh))`", row)}
    have = {p.name for p in (root / "nety_jax").rglob("*") if p.is_file()}
    have |= {p.name for p in (root / "scripts").glob("*")}
    return sorted(named - have)


def test_every_module_and_script_is_in_the_architecture_table():
    assert unlisted(ROOT, ARCHITECTURE.read_text(encoding="utf-8")) == []


def test_no_row_names_a_file_that_is_gone():
    assert stale(ROOT, ARCHITECTURE.read_text(encoding="utf-8")) == []


def test_the_checks_find_a_missing_and_a_stale_module(tmp_path):
    for rel in ("nety_jax/layers/attention.py", "nety_jax/layers/new.py", "nety_jax/cli.py",
                "scripts/bench.py", "scripts/bench_new.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    text = ("## Modules\n\n| module | role |\n|---|---|\n| `layers/` | `attention.py`, `gone.py` |\n"
            "| `cli.py` | the command |\n| `scripts/` (outside) | `bench.py` |\n\n## Next\n")
    assert unlisted(tmp_path, text) == ["nety_jax/layers/new.py", "scripts/bench_new.py"]
    assert stale(tmp_path, text) == ["gone.py"]
