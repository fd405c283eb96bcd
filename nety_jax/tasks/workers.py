"""The worker processes of ``nety-jax prepare``: each loads the tokenizer once, then encodes and
writes whole shards (``Task.write_shard``). Module-level functions: the pool pickles them."""
from __future__ import annotations

import os

from nety_jax.data.tokenizer import load_tokenizer
from nety_jax.tasks.registry import get_task

_WORKER: dict = {}


def init_worker(task_name: str, data_cfg, tokenizer_dir: str) -> None:
    _WORKER.update(task=get_task(task_name), cfg=data_cfg, tokenizer=load_tokenizer(tokenizer_dir))


def write_job(numbered: tuple) -> tuple[int, dict]:
    """``(i, (split, k, items, path))`` -> ``(i, stats)`` of the shard written to ``path``."""
    i, (split, k, items, path) = numbered
    stats = _WORKER["task"].write_shard(_WORKER["cfg"], _WORKER["tokenizer"], items, path)
    return i, {"file": os.path.basename(path), **stats, "items": len(items)}
