"""Tasks (``base.Task``): what a model is trained to do, apart from its architecture.

``get_task(name)`` returns the task; ``get_model(cfg.model).task`` is the one of an
architecture. Nothing outside this package (and the architecture registry that
pairs an architecture with its task's name) names a task.
"""
from nety_jax.tasks.base import Corpus, DataSplit, Task
from nety_jax.tasks.registry import (TASKS, all_tasks, check_data_option, get_task, require_continuation,
                                     task_of_signature)

__all__ = ["Corpus", "DataSplit", "Task", "TASKS", "all_tasks", "check_data_option", "get_task",
           "require_continuation", "task_of_signature"]
