"""The decoder-only language model: the shared Transformer decoder without cross-attention.

GPT-2 "124M" (Raschka's "Build a Large Language Model from Scratch") is the
default: pre-norm, GELU (tanh approximation), learned positions, no q/k/v bias,
an untied output head without bias. Parameters live at the top level: ``embed``,
``pos_embed``, ``layers_{i}``, ``final_norm``, ``fc_out``.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from nety_jax.layers import DecoderSpec, TransformerDecoder
from nety_jax.layers.transformer import grow_cache, rewind_cache
from nety_jax.models.base import count_params, stack_rows
from nety_jax.models.gpt.config import GPTConfig
from nety_jax.models.gpt.flops import gpt_train_step_flops
from nety_jax.models.lm import LanguageModel


def decoder_spec(cfg: GPTConfig) -> DecoderSpec:
    return DecoderSpec(vocab_size=cfg.vocab_size, d_model=cfg.d_model, heads=cfg.heads,
                       layers=cfg.layers, d_ff=cfg.d_ff, max_len=cfg.max_len, dropout=cfg.dropout,
                       attention_dropout=cfg.attention_dropout, activation=cfg.activation,
                       norm=cfg.norm, positions=cfg.positions, embed_scale=False,
                       qkv_bias=cfg.qkv_bias, cross_attention=False, tie_output=cfg.tie_output,
                       output_bias=cfg.output_bias, dtype=cfg.dtype, quant=cfg.quant, eps=cfg.norm_eps,
                       blocked_ids=tuple(cfg.blocked_ids))


@dataclasses.dataclass(frozen=True)
class GPTModel(LanguageModel):
    cfg: GPTConfig

    def network(self, axis_name: Optional[str] = None) -> TransformerDecoder:
        return TransformerDecoder(dataclasses.replace(decoder_spec(self.cfg), remat=self.remat.policy))

    def parameter_rows(self) -> list[tuple[str, int]]:
        params = self.abstract_variables()["params"]
        layers = [n for n in params if n.startswith("layers_")]
        rows = [("token embedding (embed)", count_params(params["embed"]))]
        if "pos_embed" in params:
            rows.append(("position embedding (pos_embed)", count_params(params["pos_embed"])))
        rows.append((f"transformer blocks ({len(layers)} x {count_params(params[layers[0]]):,})",
                     count_params([params[n] for n in layers])))
        for name in ("final_norm", "fc_out", "out_bias"):
            if name in params:
                rows.append((name, count_params(params[name])))
        return rows + [("total", count_params(params))]

    def loss_sums(self, variables, batch: dict, *, train: bool = False, rng=None, axis_name=None,
                  label_smoothing: float = 0.0):
        """The base class's sums, through the decoder's fused head and loss where it applies (no
        label smoothing, a float32 head, not inside pmap / shard_map, whose per-device gradients
        the fused gradient's accumulator does not declare): the (B, T, V) logits are never made
        whole."""
        net = self.network(axis_name)
        if label_smoothing > 0.0 or axis_name is not None or not net.apply(variables,
                                                                            method=net.fused_head_applies):
            return super().loss_sums(variables, batch, train=train, rng=rng, axis_name=axis_name,
                                     label_smoothing=label_smoothing)
        from nety_jax.layers.losses import token_mask
        mutable = [k for k in variables if k != "params"] if train else False
        out = net.apply(variables, **self._call_args(batch), targets=batch["targets"], mask=token_mask(batch),
                        train=train, rngs={"dropout": rng} if rng is not None else {}, mutable=mutable,
                        method=net.loss_sums)
        return (out, {}) if mutable is False else (out[0], dict(out[1]))

    def train_flops(self, batch: dict) -> float:
        return gpt_train_step_flops(self.cfg, *batch["tokens"].shape)

    def start_decoding(self, variables, tokens, lengths, max_new_tokens: int):
        """One prefill call writes every prompt position; logits at each row's last token."""
        net = self.network()
        b, p = tokens.shape
        size = self.check_room(p, max_new_tokens)
        cache = net.apply(variables, b, max(size, 1), method=net.init_cache)
        logits, cache = net.apply(variables, tokens, cache, lengths, True, method=net.decode)
        return logits[:, 0], cache

    # A prefix's state is its self-attention keys and values: the KV of position i depends on the
    # tokens up to i only, so the first P positions of any prompt's cache serve every prompt that
    # starts with those P tokens. Kept widths are rounded up to STATE_MULTIPLE (few shapes).
    reuse = "prefix"
    states_cut = True
    STATE_MULTIPLE = 16

    def prompt_states(self, cache, rows: int) -> list:
        pos = np.asarray(cache["pos"])
        size = cache["layers"][0]["k"].shape[2]
        return [self._kept(cache, i, int(pos[i]), size) for i in range(rows)]

    def _kept(self, cache, i: int, n: int, size: int) -> dict:
        """Row ``i`` of ``cache`` as the state of its first ``n`` tokens."""
        return _row_keys_values(cache, n, i, min(-(-n // self.STATE_MULTIPLE) * self.STATE_MULTIPLE, size))

    def cut_state(self, state, n: int):
        return self._kept(state, 0, n, state["layers"][0]["k"].shape[2])

    def join_states(self, states: list, batch: int):
        known = [s for s in states if s is not None]
        if batch == 1 and states[0] is not None:  # a chat: nothing to fill
            return states[0]
        width = max(s["layers"][0]["k"].shape[2] for s in known)

        def widen(s):
            if s is None:  # nothing cached: position 0, every key still to be written
                s = {"pos": jnp.zeros_like(known[0]["pos"]),
                     "layers": tuple({k: jnp.zeros_like(e[k][:, :, :0]) for k in ("k", "v")}
                                     for e in known[0]["layers"])}
            pad = ((0, 0), (0, 0), (0, width - s["layers"][0]["k"].shape[2]), (0, 0))
            return {"pos": s["pos"], "layers": tuple({k: jnp.pad(e[k], pad) for k in ("k", "v")}
                                                     for e in s["layers"])}
        rows = [widen(s) for s in states] + [widen(None)] * (batch - len(states))
        return stack_rows(rows)

    def start_from_states(self, variables, states, tokens, lengths, max_new_tokens: int):
        """Writes each row's suffix after its cached keys and values, as one prefill call."""
        net = self.network()
        # room for every row's suffix and reply after the widest cached prefix
        pad = ((0, 0), (0, 0), (0, tokens.shape[1] + max(max_new_tokens, 1) - 1), (0, 0))
        cache = {"pos": states["pos"],
                 "layers": tuple({k: jnp.pad(e[k], pad) for k in ("k", "v")} for e in states["layers"])}
        logits, cache = net.apply(variables, tokens, cache, lengths, True, method=net.decode)
        return logits[:, 0], cache

    def slot_prefill_from(self, variables, states, tokens, lengths, source_len: int):
        """The slot layout holds the whole context (``model.max_len`` positions); past it a
        continued prefill writes only padding (a prompt and its suffix fit the context)."""
        logits, cache = self.start_from_states(variables, states, tokens, lengths, 1)
        size = self.cfg.max_len

        def fit(x):
            return x[:, :, :size] if x.shape[2] >= size else jnp.pad(
                x, ((0, 0), (0, 0), (0, size - x.shape[2]), (0, 0)))
        return logits, {"pos": cache["pos"], "layers": tuple({k: fit(e[k]) for k in ("k", "v")}
                                                             for e in cache["layers"])}

    def decode_step(self, variables, tokens, cache):
        net = self.network()
        logits, cache = net.apply(variables, tokens[:, None], cache, method=net.decode)
        return logits[:, 0], cache

    def draft_room(self, cache, extra: int):
        return grow_cache(cache, extra)

    def decode_steps(self, variables, tokens, cache):
        """One forward over the T tokens; keeping n of them only moves the positions back."""
        net = self.network()
        logits, new = net.apply(variables, tokens, cache, method=net.decode)
        return logits, (new, cache["pos"])

    def keep_steps(self, pending, n):
        cache, before = pending
        return rewind_cache(cache, before + n)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _row_keys_values(cache, n, i: int, width: int) -> dict:
    """Row ``i``'s first ``width`` keys and values (copies: the loop donates the cache), at ``n``."""
    layers = tuple({k: jnp.copy(e[k][i:i + 1, :, :width]) for k in ("k", "v")} for e in cache["layers"])
    return {"pos": jnp.full((1,), n, cache["pos"].dtype), "layers": layers}
