"""The hybrid behind the model protocol: a seq2seq model (source in, reply out)."""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from nety_jax.config.sections import SOS_ID
from nety_jax.layers.transformer import grow_cache, rewind_cache
from nety_jax.models.base import Model, count_params, row_of, stack_rows
from nety_jax.models.hybrid.config import HybridConfig
from nety_jax.models.hybrid.flops import train_step_flops
from nety_jax.models.hybrid.network import HybridSeq2Seq


@dataclasses.dataclass(frozen=True)
class HybridModel(Model):
    cfg: HybridConfig

    def network(self, axis_name: Optional[str] = None) -> HybridSeq2Seq:
        return HybridSeq2Seq(self.cfg, axis_name, self.remat)

    def example_batch(self, batch: int = 2, length: int = 8) -> dict:
        ones = np.ones((batch, length), np.int32)
        return {"src": ones, "src_len": np.full((batch,), length, np.int32), "tgt_in": ones,
                "targets": ones}

    def _call_args(self, batch: dict) -> dict:
        return {"src": batch["src"], "src_len": batch["src_len"], "tgt_in": batch["tgt_in"]}

    def parameter_rows(self) -> list[tuple[str, int]]:
        """NETY's grouping: encoder embedding, encoder body, decoder (with their parts)."""
        params = self.abstract_variables()["params"]
        enc, dec = params["encoder"], params["decoder"]
        rows = [("encoder embedding (rnn_embedding)", count_params(params["enc_embed"])),
                ("encoder body (rnn_encoder)", count_params(enc))]
        rows += [(f"  encoder.{name}", count_params(enc[name])) for name in sorted(enc)]
        rows.append(("decoder (transformer_decoder)", count_params(dec)))
        rows += [(f"  decoder.{name}", count_params(dec[name]))
                 for name in sorted(dec, key=lambda n: (n.startswith("layers_"), n))]
        if "pointer" in params:
            rows.append(("copy head (pointer)", count_params(params["pointer"])))
        return rows + [("total", count_params(params))]

    def train_flops(self, batch: dict) -> float:
        (b, src_len), tgt_len = batch["src"].shape, batch["tgt_in"].shape[1]
        return train_step_flops(self.cfg, b, src_len, tgt_len)["total"]

    def start_decoding(self, variables, tokens, lengths, max_new_tokens: int):
        """Encodes the sources, keeps the cross-attention memory in the cache, feeds <sos>."""
        net = self.network()
        memory, mask = net.apply(variables, tokens, lengths, method=net.encode)
        cache = net.apply(variables, memory, mask, max(max_new_tokens, 1), tokens, method=net.init_cache)
        return self._first_step(variables, cache)

    def _first_step(self, variables, cache):
        net = self.network()
        sos = jnp.full((jax.tree_util.tree_leaves(cache)[0].shape[0], 1), SOS_ID, jnp.int32)
        logits, cache = net.apply(variables, sos, cache, method=net.decode_step)
        return logits[:, 0], cache

    # The encoder pass of a source is reused as it is: its cross-attention keys and values (and
    # the copy head's view). The key is the whole padded source row: NETY's pooling at the last
    # padded position makes the memory depend on the padding too.
    reuse = "whole"

    def prompt_states(self, cache, rows: int) -> list:
        encoded = self.network().encoded(cache)
        return [row_of(encoded, i) for i in range(rows)]

    def join_states(self, states: list, batch: int):
        known = next(s for s in states if s is not None)  # fillers take any row: their reply is dropped
        return stack_rows([known if s is None else s for s in states] + [known] * (batch - len(states)))

    def slot_prefill_from(self, variables, states, tokens, lengths, source_len: int):
        return self.start_from_states(variables, states, tokens, lengths, self.prompts.max_new_tokens())

    def start_from_states(self, variables, states, tokens, lengths, max_new_tokens: int):
        net = self.network()
        cache = net.apply(variables, states, max(max_new_tokens, 1), method=net.cache_from_encoded)
        return self._first_step(variables, cache)

    def decode_step(self, variables, tokens, cache):
        net = self.network()
        logits, cache = net.apply(variables, tokens[:, None], cache, method=net.decode_step)
        return logits[:, 0], cache

    def _on_decoder(self, cache, fn):
        """``fn`` applied to the decoder's self-attention cache (inside the copy head's, if any)."""
        if self.cfg.copy:
            return {"decoder": fn(cache["decoder"]), "copy": cache["copy"]}
        return fn(cache)

    def draft_room(self, cache, extra: int):
        return self._on_decoder(cache, lambda c: grow_cache(c, extra))

    def decode_steps(self, variables, tokens, cache):
        """One forward over the T tokens; keeping n of them only moves the positions back."""
        net = self.network()
        logits, new = net.apply(variables, tokens, cache, method=net.decode_step)
        before = (cache["decoder"] if self.cfg.copy else cache)["pos"]
        return logits, (new, before)

    def keep_steps(self, pending, n):
        cache, before = pending
        return self._on_decoder(cache, lambda c: rewind_cache(c, before + n))

    def slot_prefill(self, variables, tokens, lengths, source_len: int):
        """Sources encoded at their own bucket (as ``generate`` encodes them alone, and the
        recurrence runs over that width only), then the memory padded to the slot layout's
        ``source_len`` positions with its mask off there: one memory shape in every slot."""
        net = self.network()
        memory, mask = net.apply(variables, tokens, lengths, method=net.encode)
        extra = source_len - tokens.shape[1]
        tokens = jnp.pad(tokens, ((0, 0), (0, extra)))
        if self.cfg.memory == "sequence":  # a pooled memory is one vector, whatever the width
            memory = jnp.pad(memory, ((0, 0), (0, extra), (0, 0)))
            mask = jnp.pad(mask, ((0, 0), (0, extra)))
        cache = net.apply(variables, memory, mask, max(self.prompts.max_new_tokens(), 1), tokens,
                          method=net.init_cache)
        return self._first_step(variables, cache)

    # The memory's leaves in the slot layout: each layer's cross-attention keys, values and mask,
    # and the copy head's view; a pooled memory (one vector, no "mask") has no memory axis.
    def slot_memory(self, prompt_width: int, source_len: int) -> int:
        if self.cfg.memory != "sequence" or prompt_width >= source_len:
            return 0
        return prompt_width + int(self.cfg.memory_prepend_pooled)

    def slot_narrow(self, cache, size: int):
        cut = lambda x, axis: jax.lax.slice_in_dim(x, 0, size, axis=axis)
        return self._with_memory(cache, lambda cross: {"k": cut(cross["k"], 2), "v": cut(cross["v"], 2),
                                                       "mask": cut(cross["mask"], 1)},
                                 lambda view: {name: cut(x, 1) for name, x in view.items()})

    def slot_widen(self, full, narrow):
        layers = self._decoder_cache(full)["layers"]
        cross = iter(entry["cross"] for entry in layers)
        return self._with_memory(narrow, lambda _: next(cross), lambda _: full["copy"])

    def _decoder_cache(self, cache):
        return cache["decoder"] if self.cfg.copy else cache

    def _with_memory(self, cache, cross_fn, copy_fn):
        """``cache`` with each layer's cross-attention entry replaced by ``cross_fn(entry)`` and
        the copy head's view by ``copy_fn(view)``."""
        dec = self._decoder_cache(cache)
        layers = tuple({**entry, "cross": cross_fn(entry["cross"])} for entry in dec["layers"])
        dec = {**dec, "layers": layers}
        return {"decoder": dec, "copy": copy_fn(cache["copy"])} if self.cfg.copy else dec
