"""The recurrent language model: embeddings -> the shared scanned cells -> next-token logits.

Decoding keeps each layer's carry in the cache; a prefill freezes each row's carry
after its last real prompt token, so prompts of different lengths share a batch.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from nety_jax.layers import RecurrentStack
from nety_jax.layers.attention import length_mask
from nety_jax.layers.dropout import Dropout
from nety_jax.layers.linear import Linear
from nety_jax.layers.partitioning import embedding, named
from nety_jax.layers.remat import Remat
from nety_jax.models.base import last_real, row_of, stack_rows
from nety_jax.models.flops import TRAIN_FACTOR, dense, recurrent_layer
from nety_jax.models.lm import LanguageModel
from nety_jax.models.rnn_lm.config import RNNLMConfig


class RNNLM(nn.Module):
    cfg: RNNLMConfig
    remat: Remat = Remat()  # training's rematerialisation of the recurrent layers (layers/remat.py)

    def setup(self):
        cfg = self.cfg
        self.embed = embedding(cfg.vocab_size, cfg.d_model)
        self.rnn = RecurrentStack(cfg.cell, cfg.hidden, cfg.layers, bidirectional=False,
                                  dropout=cfg.dropout, dtype=jnp.dtype(cfg.dtype), quant=cfg.quant,
                                  remat=self.remat)
        self.drop = Dropout(cfg.dropout)
        if not cfg.tie_output:
            self.fc_out = Linear(cfg.vocab_size, use_bias=cfg.output_bias, dtype=jnp.dtype(cfg.dtype),
                                 quant=cfg.quant, axes=("hidden", "vocab"))
        elif cfg.output_bias:
            self.out_bias = self.param("out_bias", named(nn.initializers.zeros, ("vocab",)), (cfg.vocab_size,))

    def _logits(self, h):
        if self.cfg.tie_output:
            logits = self.embed.attend(h.astype(jnp.float32))
            return logits + self.out_bias if self.cfg.output_bias else logits
        return self.fc_out(h).astype(jnp.float32)

    def _embed(self, tokens, train: bool):
        x = self.drop(self.embed(tokens), deterministic=not train)
        return x.astype(jnp.dtype(self.cfg.dtype))

    def __call__(self, tokens, train: bool = False, segments=None, positions=None):
        """Teacher forcing: (B, T) -> (B, T, V) logits. Packed rows (``segments`` (B, T)) start
        each segment from a zero carry; ``positions`` add nothing to a recurrence."""
        reset = None if segments is None else segments != jnp.pad(segments[:, :-1], ((0, 0), (1, 0)))
        h, _, _ = self.rnn(self._embed(tokens, train), None, train, reset=reset)
        return self._logits(self.drop(h, deterministic=not train))

    def prefill(self, tokens, lengths, start: Optional[dict] = None):
        """Right-padded prompts -> (logits at each row's last token, cache); ``start``: a cache
        to continue from (the prompts are then what follows the tokens it has read)."""
        live = length_mask(lengths, tokens.shape[1])
        carries = None if start is None else _from_cache(start["state"])
        h, _, carries = self.rnn(self._embed(tokens, False), carries=carries, live=live)
        pos = lengths if start is None else start["pos"] + lengths
        return self._logits(last_real(h, lengths)), {"pos": pos, "state": _to_cache(carries)}

    def step(self, tokens, cache):
        """(B,) tokens -> (B, V) logits and the advanced carries."""
        h, _, carries = self.rnn(self._embed(tokens[:, None], False),
                                 carries=_from_cache(cache["state"]))
        return self._logits(h[:, 0]), {"pos": cache["pos"] + 1, "state": _to_cache(carries)}

    def steps(self, tokens, cache):
        """(B, T) tokens fed in order -> ((B, T, V) logits, the carries after each token stacked
        (T, B, H)): the recurrence runs token by token, the output layer once."""
        carries, hs, states = _from_cache(cache["state"]), [], []
        x = self._embed(tokens, False)
        for t in range(tokens.shape[1]):
            h, _, carries = self.rnn(x[:, t:t + 1], carries=carries)
            hs.append(h[:, 0])
            states.append(_to_cache(carries))
        stacked = jax.tree_util.tree_map(lambda *parts: jnp.stack(parts), *states)
        return self._logits(jnp.stack(hs, axis=1)), stacked


def _to_cache(carries):
    """(1, B, H) per carry part -> (B, H): every cache leaf has the batch first."""
    return tuple(tuple(part[0] for part in carry) for carry in carries)


def _from_cache(state):
    return tuple(tuple(part[None] for part in carry) for carry in state)


@dataclasses.dataclass(frozen=True)
class RNNLMModel(LanguageModel):
    cfg: RNNLMConfig

    def network(self, axis_name: Optional[str] = None) -> RNNLM:
        return RNNLM(self.cfg, self.remat)

    def train_flops(self, batch: dict) -> float:
        """The stacked cells' input and hidden projections and the output head (models/flops.py)."""
        cfg, (b, t) = self.cfg, batch["tokens"].shape
        widths = [cfg.d_model] + [cfg.hidden] * (cfg.layers - 1)
        forward = sum(recurrent_layer(cfg.cell, w, cfg.hidden, b * t) for w in widths)
        return TRAIN_FACTOR * (forward + dense(b * t, cfg.hidden, cfg.vocab_size))

    def start_decoding(self, variables, tokens, lengths, max_new_tokens: int):
        self.check_room(tokens.shape[1], max_new_tokens)
        net = self.network()
        return net.apply(variables, tokens, lengths, method=net.prefill)

    # A prefix's state is the carries after its last token (a zero carry is the empty prefix).
    reuse = "prefix"

    def prompt_states(self, cache, rows: int) -> list:
        return [row_of(cache, i) for i in range(rows)]

    def join_states(self, states: list, batch: int):
        known = next(s for s in states if s is not None)
        empty = jax.tree_util.tree_map(jnp.zeros_like, known)
        return stack_rows([empty if s is None else s for s in states] + [empty] * (batch - len(states)))

    def start_from_states(self, variables, states, tokens, lengths, max_new_tokens: int):
        net = self.network()
        return net.apply(variables, tokens, lengths, states, method=net.prefill)

    def decode_step(self, variables, tokens, cache):
        net = self.network()
        return net.apply(variables, tokens, cache, method=net.step)

    def decode_steps(self, variables, tokens, cache):
        net = self.network()
        logits, states = net.apply(variables, tokens, cache, method=net.steps)
        return logits, (states, cache["pos"])

    def keep_steps(self, pending, n):
        states, before = pending
        rows = jnp.arange(n.shape[0])
        return {"pos": before + n, "state": jax.tree_util.tree_map(lambda x: x[n - 1, rows], states)}
