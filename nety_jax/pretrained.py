"""Loading a run directory for inference: ``load_pretrained(path).generate(texts)``."""
from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nety_jax import checkpoint as ckpt
from nety_jax.config import PAD_ID, Config, DecodeConfig
from nety_jax.errors import CheckpointError
from nety_jax.generate import generate_jit
from nety_jax.prompts import decode_replies, encode_sources
from nety_jax.model import HybridSeq2Seq, abstract_variables
from nety_jax.tokenizer import Tokenizer, load_tokenizer


class Pretrained:
    """A trained model with its config and tokenizer, ready for generation."""

    def __init__(self, cfg: Config, tokenizer: Tokenizer, variables: dict, step: int = 0):
        self.config, self.tokenizer, self.variables, self.step = cfg, tokenizer, variables, step
        self.model = HybridSeq2Seq(cfg.model)
        self._logits = jax.jit(lambda v, s, l, t: self.model.apply(v, s, l, t, train=False))

    def decode_config(self, **overrides) -> DecodeConfig:
        overrides = {k: v for k, v in overrides.items() if v is not None}
        dcfg = dataclasses.replace(self.config.decode, **overrides)
        dcfg.validate()
        return dcfg

    def generate(self, texts: Sequence[str], seed: int = 0, num_samples: int = 1,
                 **decode_overrides) -> list[list[str]]:
        """Replies per text (``num_samples`` each). Overrides: temperature, top_k, top_p,
        beam_size, max_new_tokens, length_penalty, min_new_tokens, no_repeat_ngram."""
        if isinstance(texts, str):
            texts = [texts]
        dcfg = self.decode_config(**decode_overrides)
        repeated = [t for t in texts for _ in range(num_samples)]
        src, lengths = encode_sources(self.tokenizer, repeated, self.config.data)
        out = generate_jit(self.variables, jnp.asarray(src), jnp.asarray(lengths),
                           jax.random.PRNGKey(seed), cfg=self.config.model, dcfg=dcfg)
        replies = decode_replies(self.tokenizer, out["tokens"], len(repeated))
        return [replies[i * num_samples: (i + 1) * num_samples] for i in range(len(texts))]

    def logits(self, src_ids, tgt_ids, src_lengths=None) -> np.ndarray:
        """Teacher-forced logits in eval mode: (B, S), (B, T) ids -> (B, T, V) numpy."""
        src_ids = jnp.asarray(src_ids, jnp.int32)
        if src_lengths is None:
            src_lengths = jnp.sum(src_ids != PAD_ID, axis=1)
        return np.asarray(self._logits(self.variables, src_ids, jnp.asarray(src_lengths, jnp.int32),
                                       jnp.asarray(tgt_ids, jnp.int32)))


def load_variables(workdir: str, cfg: Config, step: Optional[int] = None) -> tuple[dict, int]:
    """Model variables (params + batch_stats) of a checkpoint, without the optimizer state."""
    step = ckpt.latest_step(workdir) if step is None else step
    if step is None:
        raise CheckpointError(f"{workdir}: no checkpoint found in {ckpt.checkpoint_dir(workdir)}")
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
        abstract_variables(cfg.model))
    target = {"params": abstract["params"], "batch_stats": abstract.get("batch_stats", {})}
    manager = ckpt.make_manager(workdir, cfg, read_only=True)
    try:
        import orbax.checkpoint as ocp
        with ckpt.quiet_orbax():
            restored = manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item=target, partial_restore=True,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(target))))
    except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise CheckpointError(f"{workdir}: checkpoint {step} does not fit its config ({msg})") from None
    finally:
        manager.close()
    state = restored.state
    # a partial restore leaves the abstract leaf where the checkpoint lacks a parameter
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        if isinstance(leaf, jax.ShapeDtypeStruct):
            raise CheckpointError(f"{workdir}: checkpoint {step} has no "
                                  f"{jax.tree_util.keystr(path)}: it was written by another "
                                  "model config or version")
    return {"params": state["params"], "batch_stats": state.get("batch_stats", {})}, step


def load_pretrained(workdir: str, step: Optional[int] = None) -> Pretrained:
    """Loads ``workdir`` (a ``nety-jax train`` or ``import-torch`` output directory)."""
    if not os.path.isdir(workdir):
        raise CheckpointError(f"{workdir}: no such run directory")
    cfg = ckpt.read_run_config(workdir)
    tokenizer = load_tokenizer(workdir)
    variables, step = load_variables(workdir, cfg, step)
    return Pretrained(cfg, tokenizer, variables, step)
