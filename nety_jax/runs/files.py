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
from typing import Optional

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


def load_run_tokenizer(workdir: str, cfg: Optional[Config] = None):
    """The run's tokenizer. With ``cfg`` (the run's config), one with more ids than the model's
    vocabulary is refused naming it: it is not the tokenizer the run was trained with (another
    run's, copied in), and its ids past the embedding table would be clamped silently."""
    from nety_jax.data.tokenizer import load_tokenizer
    tokenizer = load_tokenizer(workdir)
    if cfg is not None and tokenizer.vocab_size > cfg.model.vocab_size:
        raise CheckpointError(f"{os.path.join(workdir, 'tokenizer.json')}: a tokenizer of {tokenizer.vocab_size:,} "
                              f"ids, more than the model's vocabulary (model.vocab_size={cfg.model.vocab_size:,} "
                              f"in {config_path(workdir)}): not the tokenizer this run was trained with; "
                              "put the run's own back")
    return tokenizer
