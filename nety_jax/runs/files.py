"""The run directory's files: where each lives, its config, its tokenizer.

A run directory holds::

    nety-jax.json        the marker: which writer made it (runs/guard.py); older runs lack it
    config.yaml          the resolved config (rebuilds the model)
    tokenizer.json (+ tokenizer.model or vocab.json)
    checkpoints/<step>/  state (TrainState arrays, or only the variables) + meta (JSON)
    metrics.jsonl, events.out.tfevents.*, loss.png, .lock
    damaged/<step>/      checkpoints that failed to restore, moved aside (never deleted)
"""
from __future__ import annotations

import os

from nety_jax import config as config_lib
from nety_jax.config import Config
from nety_jax.errors import CheckpointError

CONFIG_FILE = "config.yaml"
CHECKPOINTS = "checkpoints"
DAMAGED = "damaged"


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), CHECKPOINTS)


def config_path(workdir: str) -> str:
    return os.path.join(workdir, CONFIG_FILE)


def read_run_config(workdir: str) -> Config:
    if not os.path.isdir(workdir):
        raise CheckpointError(f"{workdir}: no such run directory")
    path = config_path(workdir)
    if not os.path.isfile(path):
        raise CheckpointError(f"{workdir}: not a nety-jax run directory (no {CONFIG_FILE})")
    return config_lib.load_config(path)


def write_run_config(workdir: str, cfg: Config) -> None:
    config_lib.save_config(cfg, config_path(workdir))


def load_run_tokenizer(workdir: str):
    from nety_jax.data.tokenizer import load_tokenizer
    return load_tokenizer(workdir)
