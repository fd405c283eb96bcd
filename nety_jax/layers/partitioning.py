"""Logical axis names of parameters (flax's logical partitioning).

Every parameter is created with the names of its axes, e.g. a feed-forward kernel
``("embed", "mlp")``; ``training/parallel.py`` maps names to mesh axes with one
table of rules (``train.mesh_rules``), so layers never name a device. The names:

- ``vocab``: token embeddings' rows, the output head's columns;
- ``embed``: the model width (d_model) and norms over it;
- ``heads``: attention projections' head dimension (q/k/v outputs, the output input);
- ``mlp``: the feed-forward width (d_ff) and the encoder head's hidden widths;
- ``gates``: a recurrent layer's gate pre-activations (G x hidden);
- ``hidden``: a recurrent layer's state width (its recurrent kernel's input);
- ``position``: learned position embeddings' rows;
- ``directions``: forward/backward recurrent weights (never split).

``init`` returns boxed (``nn.LogicallyPartitioned``) variables; ``models.base`` unboxes them,
so only ``Model.logical_axes()`` ever sees the names.
"""
from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn

AXES = ("vocab", "embed", "heads", "mlp", "gates", "hidden", "position", "directions")


def named(init, axes: Sequence[Optional[str]]):
    """``init`` whose parameter carries the logical names ``axes`` (one per dimension)."""
    return nn.with_logical_partitioning(init, tuple(axes))


def layer_norm(epsilon: float, name: Optional[str] = None) -> nn.LayerNorm:
    """flax's LayerNorm with its scale and bias named over the model width."""
    return nn.LayerNorm(epsilon=epsilon, name=name,
                        scale_init=named(nn.initializers.ones, ("embed",)),
                        bias_init=named(nn.initializers.zeros, ("embed",)))


def embedding(vocab: int, features: int, name: Optional[str] = None) -> nn.Embed:
    """flax's Embed (its default initializer) with rows named ``vocab``, columns ``embed``."""
    return nn.Embed(vocab, features, embedding_init=named(nn.linear.default_embed_init, ("vocab", "embed")),
                    name=name)
