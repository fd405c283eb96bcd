"""The worker processes of ``nety-jax prepare``: each loads the tokenizer once, then encodes and
writes whole shards (``Task.write_shard``). Module-level functions: the pool pickles them."""
from __future__ import annotations

import os

from nety_jax.data.tokenizer import load_tokenizer
from nety_jax.tasks.registry import get_task

_WORKER: dict = {}


def init_worker(task_name: str, data_cfg, tokenizer_dir: str) -> None:
    _WORKER.update(task=get_task(task_name), cfg=data_cfg, tokenizer=load_tokenizer(tokenizer_dir))


def write_job(job: tuple) -> dict:
    """``(split, k, items, path)`` -> the stats of the shard written to ``path`` (and its split and k)."""
    split, k, items, path = job
    stats = _WORKER["task"].write_shard(_WORKER["cfg"], _WORKER["tokenizer"], items, path)
    return {"split": split, "k": k, "file": os.path.basename(path), **stats, "items": len(items)}
