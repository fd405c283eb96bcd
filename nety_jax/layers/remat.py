"""Activation rematerialisation (``train.remat``): what the backward pass keeps, what it recomputes.

- ``none``: every intermediate the backward pass needs is kept from the forward pass;
- ``full``: a checkpointed block keeps only its inputs and recomputes everything inside it
  (``jax.checkpoint_policies.nothing_saveable``): activation memory drops to about one block's
  worth plus the inputs of every block, for one more forward pass;
- ``dots``: the block keeps the outputs of its matrix products with the weights and recomputes
  the rest (norms, activations, softmax, attention scores: ``dots_with_no_batch_dims_saveable``,
  MaxText's "minimal" policy), the usual middle ground.

The blocks are the decoder's layers (each one checkpointed) and the recurrent layers, for which
``train.remat_scan`` chooses the unit: ``layer`` checkpoints the whole scanned layer (only its
input sequence is kept; the backward pass re-runs the scan), ``step`` checkpoints each time step
inside the scan (the carries are kept, each step's gates are recomputed). The parameters do not
change: a run may change its policy when it resumes.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax

POLICIES = ("none", "full", "dots")


@dataclasses.dataclass(frozen=True)
class Remat:
    policy: str = "none"  # none | full | dots
    scan: str = "layer"  # recurrent layers: checkpoint each layer or each time step


def checkpointed(module_cls, policy: str, static_argnums: tuple = ()):
    """``module_cls`` whose ``__call__`` is rematerialised under ``policy`` (unchanged for none)."""
    if policy == "none":
        return module_cls
    saved = {"full": jax.checkpoint_policies.nothing_saveable,
             "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}[policy]
    return nn.remat(module_cls, policy=saved, static_argnums=static_argnums)
