"""Analytic FLOP and byte counts (for MFU and bandwidth bounds): the library's, re-exported.

The counts are owned by each architecture (``nety_jax/models/<arch>/flops.py``, the shared
blocks in ``nety_jax/models/flops.py``; ``Model.train_flops(batch)`` is what training logs
as MFU). The benchmark scripts import them from here.
"""
from __future__ import annotations

from nety_jax.models.gpt.flops import (gpt_decode_weight_bytes, gpt_forward_flops,  # noqa: F401
                                       gpt_generate_flops, gpt_train_step_flops)
from nety_jax.models.hybrid.flops import (decode_weight_bytes, decoder_train_flops,  # noqa: F401
                                          encoder_flops, generate_flops, train_step_flops)
