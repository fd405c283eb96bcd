"""The one place a task plugs in: its name -> its class (an import path, so an exported
artifact's loader imports no Flax and no decoding code)."""
from __future__ import annotations

import functools
import importlib

from nety_jax.errors import CheckpointError, NetyError

TASKS = {
    "seq2seq": "nety_jax.tasks.seq2seq:Seq2SeqTask",
    "lm": "nety_jax.tasks.lm:LanguageModelTask",
}
# Artifacts exported before the signature recorded its task were all of this one.
UNRECORDED = "seq2seq"


@functools.cache
def get_task(name: str):
    """The task object (a stateless singleton) registered as ``name``."""
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)()


def task_of_signature(signature: dict, where: str = "export.json"):
    """The task an exported artifact's ``signature`` records."""
    name = signature.get("task", UNRECORDED)
    if name not in TASKS:
        raise CheckpointError(f"{where}: signature.task={name!r} is not a task of this version "
                              f"({', '.join(TASKS)}); re-export")
    return get_task(name)


def all_tasks() -> list:
    return [get_task(name) for name in TASKS]


def _who_trains(task) -> str:
    from nety_jax.models.registry import architectures_of
    return f"{task.noun} (model.arch {' or '.join(architectures_of(task))})"


def check_data_option(task, option: str, arch: str) -> None:
    """Refuses a ``nety-jax train`` data option (``--data``, ``--text``) of another task."""
    if option == task.data_option:
        return
    other = next(t for t in all_tasks() if t.data_option == option)
    raise NetyError(f"{option} takes {other.data_help} for {_who_trains(other)}; model.arch={arch} is "
                    f"{task.noun}: use {task.data_option}")


def require_continuation(task, command: str) -> None:
    """Refuses ``command`` (complete, predict-next) unless ``task``'s prompts are texts to continue."""
    if task.continues_text:
        return
    other = next(t for t in all_tasks() if t.continues_text)
    raise NetyError(f"{command} continues a text: it needs {_who_trains(other)}; this is {task.noun}: "
                    "use generate")
