"""Every `nety-jax` command has its Python counterpart among the package's top-level names, and the
package docstring (``help(nety_jax)``) names each of them."""
import argparse

import nety_jax
from nety_jax.cli import build_parser

# each command -> the top-level name that does its work from Python
COUNTERPART = {
    "info": "get_model",  # get_model(cfg.model).parameter_rows()
    "train": "train", "prepare": "prepare_data", "plan": "plan_config",
    "generate": "load_pretrained", "complete": "load_pretrained", "predict-next": "load_pretrained",
    "chat": "chat", "export": "export_run", "serve": "serve", "quantize": "quantize_run",
    "import-torch": "import_torch", "export-torch": "export_torch",
    "import-hf": "import_hf", "export-hf": "export_hf",
}


def commands() -> set:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def test_every_command_has_a_documented_python_counterpart():
    assert commands() == set(COUNTERPART)  # a new command needs its entry (and its Python name)
    for command, name in COUNTERPART.items():
        assert name in nety_jax.__all__ and callable(getattr(nety_jax, name)), command
        assert f"``{name}(" in nety_jax.__doc__, f"{name} ({command}) is not in help(nety_jax)"


def test_every_public_name_is_documented():
    undocumented = [n for n in nety_jax.__all__ if n != "__version__" and f"``{n}" not in nety_jax.__doc__
                    and f"{n}``" not in nety_jax.__doc__]
    assert undocumented == []
