"""The decoder-only language model: the shared Transformer decoder without cross-attention.

GPT-2 "124M" (Raschka's "Build a Large Language Model from Scratch") is the
default: pre-norm, GELU (tanh approximation), learned positions, no q/k/v bias,
an untied output head without bias. Parameters live at the top level: ``embed``,
``pos_embed``, ``layers_{i}``, ``final_norm``, ``fc_out``.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from nety_jax.layers import DecoderSpec, TransformerDecoder
from nety_jax.layers.transformer import grow_cache, rewind_cache
from nety_jax.models.base import count_params
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
        return TransformerDecoder(decoder_spec(self.cfg))

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
