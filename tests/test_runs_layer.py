"""The run-directory layer sits below models, training and serving; models import nothing above."""
import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "nety_jax"


def _imports(path: pathlib.Path) -> set:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n.startswith("nety_jax")}


def test_runs_import_only_config_data_and_errors():
    allowed = ("nety_jax.runs", "nety_jax.config", "nety_jax.errors", "nety_jax.data", "nety_jax._lazy")
    for path in (PACKAGE / "runs").rglob("*.py"):
        above = sorted(m for m in _imports(path) if not m.startswith(allowed) and m != "nety_jax")
        assert above == [], f"runs/{path.name} imports {above}"


def test_models_import_nothing_above_them():
    above = ("nety_jax.training", "nety_jax.serving", "nety_jax.cli", "nety_jax.tasks", "nety_jax.decoding")
    for path in (PACKAGE / "models").rglob("*.py"):
        found = sorted(m for m in _imports(path) if m.startswith(above))
        assert found == [], f"{path.relative_to(PACKAGE)} imports {found}"
