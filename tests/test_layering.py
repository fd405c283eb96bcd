"""The package's layering, read from its source: which folder may import which (imports, relative
imports, ``from nety_jax import name`` and import paths written as strings for importlib and the
lazy tables), and that only models/ names an architecture and only tasks/ names a task.

Each rule has a check on a small fake package too, so a check that stopped finding anything fails."""
import ast
import pathlib
import re

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "nety_jax"

# What each top-level module of the package sits on directly; it may import those and, transitively,
# whatever they sit on (its own folder always). Every module must be here: a new folder takes a place.
SITS_ON = {
    "errors": (), "_lazy": (), "runtime": ("errors",),
    "config": ("errors",),
    "kernels": ("config",),
    "layers": ("config", "kernels"),
    "data": ("config",),  # readers and tokenizers: runs/ and the models' weight converters read them
    "runs": ("data", "_lazy"),  # the run directory, below everything that reads or writes one
    "models": ("layers", "runs"),
    "decoding": ("models",),
    "tasks": ("models", "decoding"),
    "training": ("tasks",),
    "serving": ("training",),
    "cli": ("serving", "runtime"),
}
# Lower-to-higher imports the design chooses, each at call time, by name, for a reason.
EXCEPTIONS = {
    # the config file names model.arch: the loader asks the architecture table for its config class
    ("config/loader.py", "nety_jax.models.registry"),
    # `model.task`: the architecture table pairs each architecture with its task's name
    ("models/registry.py", "nety_jax.tasks.registry"),
}
MODULE_PATH = re.compile(r"nety_jax(\.\w+)+")
ARCH_NAMES = ("hybrid", "gpt", "rnn_lm")  # models/registry.py's ARCHITECTURES (checked below)
TASK_NAMES = ("seq2seq", "lm")  # tasks/registry.py's TASKS (checked below)
# The architecture table pairs each architecture with its task's name: the one place outside
# tasks/ that may name one.
TASK_NAMED_IN = {"models/registry.py"}


def allowed(layer: str) -> set:
    """``layer`` and everything below it."""
    out, todo = set(), [layer]
    while todo:
        name = todo.pop()
        if name not in out:
            out.add(name)
            todo.extend(SITS_ON[name])
    return out


def _layer(module: str):
    """The top-level module a dotted nety_jax module belongs to (None: the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _source_module(root: pathlib.Path, path: pathlib.Path) -> list:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ["nety_jax"] + (parts[:-1] if parts[-1] == "__init__" else parts)


def imports(root: pathlib.Path, path: pathlib.Path) -> list:
    """(line, module) of every nety_jax module ``path`` imports: statements (relative ones resolved,
    ``from package import module`` as that module, ``from nety_jax import name`` as the public API
    unless it is a module), and strings that are import paths (``"nety_jax.x.y"``,
    ``"nety_jax.x:Name"``)."""
    here = _source_module(root, path)
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found += [(node.lineno, _from(root, module, a.name)) for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = MODULE_PATH.fullmatch(node.value.split(":")[0])
            if match and _is_module(root, match.group(0)):  # not a logger's name
                found.append((node.lineno, match.group(0)))
    return [(n, m) for n, m in found
            if m == "nety_jax" or (m.startswith("nety_jax.") and m != "nety_jax.__dunder__")]


def imported_modules(root: pathlib.Path, path: pathlib.Path) -> set:
    return {module for _, module in imports(root, path)}


def _is_module(root: pathlib.Path, module: str) -> bool:
    """Whether the dotted ``module``'s top level (below nety_jax) exists under ``root``."""
    parts = module.split(".")[1:2]
    return bool(parts) and ((root / parts[0]).is_dir() or (root / f"{parts[0]}.py").is_file())


def _from(root: pathlib.Path, module: str, name: str) -> str:
    """What ``from module import name`` imports: the module ``module.name`` where there is one."""
    where = root.joinpath(*module.split(".")[1:], name)
    if where.is_dir() or where.with_suffix(".py").is_file():
        return f"{module}.{name}"
    if module == "nety_jax":  # a name of the package itself: the public API, or __version__ (no layer)
        return "nety_jax.__dunder__" if name.startswith("__") else "nety_jax"
    return module


def import_violations(root: pathlib.Path) -> list:
    """``file -> module`` for every import of a higher layer (and every module with no layer)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel == pathlib.Path("__init__.py"):
            continue  # the public API: lazy names from every layer
        layer = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        if layer not in SITS_ON:
            found.append(f"{rel.as_posix()}: {layer} has no place in SITS_ON")
            continue
        for module in sorted(imported_modules(root, path)):
            target = _layer(module)
            if module == "nety_jax" and layer != "cli":
                found.append(f"{rel.as_posix()} -> nety_jax (the public API sits above every layer)")
            elif target is not None and target not in allowed(layer) \
                    and (rel.as_posix(), module) not in EXCEPTIONS:
                found.append(f"{rel.as_posix()} -> {module}")
    return found


def named_outside(root: pathlib.Path, names, home: str, excepted=()) -> list:
    """``file:line`` of every quoted name in ``names``, and every import of ``home``'s modules of
    those names, in the package's source outside ``home/``."""
    literal = re.compile(r"""(["'])(%s)\1""" % "|".join(names))
    subpackage = re.compile(r"nety_jax\.%s\.(%s)(\..*)?" % (home, "|".join(names)))
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(f"{home}/") or rel in excepted:
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        hits = {n for n, line in enumerate(lines, 1) if literal.search(line)}
        hits |= {n for n, module in imports(root, path) if subpackage.fullmatch(module)}
        found += [f"{rel}:{n}: {lines[n - 1].strip()}" for n in sorted(hits)]
    return found


# -- the package ------------------------------------------------------------------------------------
def test_no_layer_imports_a_higher_one():
    assert import_violations(PACKAGE) == []


def test_every_exception_is_still_needed():
    for rel, module in sorted(EXCEPTIONS):
        assert module in imported_modules(PACKAGE, PACKAGE / rel), f"{rel} no longer imports {module}"


def test_no_architecture_named_outside_models():
    from nety_jax.models.registry import ARCHITECTURES
    assert tuple(ARCHITECTURES) == ARCH_NAMES
    assert named_outside(PACKAGE, ARCH_NAMES, "models") == []


def test_no_task_named_outside_tasks():
    from nety_jax.tasks.registry import TASKS
    assert tuple(TASKS) == TASK_NAMES
    assert named_outside(PACKAGE, TASK_NAMES, "tasks", TASK_NAMED_IN) == []


def test_the_layers_form_the_documented_ladder():
    """docs/ARCHITECTURE.md: each layer may import the ones before it, never one after it; runs/ sits
    below models, training and serving and imports only config, data and errors."""
    ladder = ["errors", "config", "data", "runs", "layers", "models", "decoding", "tasks", "training",
              "serving", "cli"]
    for i, layer in enumerate(ladder):
        assert not allowed(layer) & set(ladder[i + 1:]), layer
    assert allowed("runs") == {"runs", "data", "config", "errors", "_lazy"}
    assert allowed("cli") >= set(SITS_ON)


# -- the checks find what they look for -----------------------------------------------------------
def _fake(tmp_path, files: dict) -> pathlib.Path:
    root = tmp_path / "nety_jax"
    for name, text in {"__init__.py": "", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    for folder in ("training", "serving", "models", "tasks"):
        (root / folder).mkdir(exist_ok=True)
        (root / folder / "__init__.py").touch()
    return root


def test_the_import_check_finds_every_form_of_a_higher_import(tmp_path):
    root = _fake(tmp_path, {
        "layers/a.py": "import nety_jax.training.loop\n",
        "layers/b.py": "from nety_jax.serving import export\n",
        "layers/c.py": "from nety_jax import models\n",
        "layers/d.py": "from ..tasks import registry\n",
        "layers/e.py": "import importlib\nimportlib.import_module('nety_jax.training.steps')\n",
        "layers/f.py": "TABLE = {'x': 'nety_jax.models.gpt.model:GPTModel'}\n",
        "layers/g.py": "from nety_jax import train\n",
        "layers/j.py": "from nety_jax.training import loop\n",
        "training/loop.py": "from nety_jax import __version__\n",
        "layers/ok.py": ("from nety_jax.config import sections\nfrom . import a\n"
                         "from nety_jax.kernels import matmul\n"),
        "runs/h.py": "def f():\n    from nety_jax.models.registry import get_model\n",
        "widgets/i.py": "",
    })
    assert import_violations(root) == [
        "layers/a.py -> nety_jax.training.loop", "layers/b.py -> nety_jax.serving",
        "layers/c.py -> nety_jax.models", "layers/d.py -> nety_jax.tasks",
        "layers/e.py -> nety_jax.training.steps", "layers/f.py -> nety_jax.models.gpt.model",
        "layers/g.py -> nety_jax (the public API sits above every layer)",
        "layers/j.py -> nety_jax.training.loop", "runs/h.py -> nety_jax.models.registry",
        "widgets/i.py: widgets has no place in SITS_ON"]


def test_the_name_checks_find_an_architecture_and_a_task(tmp_path):
    root = _fake(tmp_path, {
        "training/x.py": "ok = 1\nif cfg.arch == 'gpt':\n    pass\n",
        "cli.py": "from nety_jax.models.hybrid.torch_io import import_torch\n",
        "serving/v.py": "from nety_jax.models import rnn_lm\n",
        "models/rnn_lm/__init__.py": "",
        "serving/y.py": "if task == \"lm\":\n    pass\n",
        "models/gpt/z.py": "arch = 'gpt'\n",
        "tasks/w.py": 'name = "seq2seq"\n',
        "models/registry.py": "TASK_OF = {'gpt': 'lm'}\n",
    })
    assert named_outside(root, ARCH_NAMES, "models") == [
        "cli.py:1: from nety_jax.models.hybrid.torch_io import import_torch",
        "serving/v.py:1: from nety_jax.models import rnn_lm", "training/x.py:2: if cfg.arch == 'gpt':"]
    assert named_outside(root, TASK_NAMES, "tasks", TASK_NAMED_IN) == ["serving/y.py:1: if task == \"lm\":"]
