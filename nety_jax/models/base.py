"""The protocol every architecture implements (T5X's BaseModel, Gemma's TransformerLike).

An adapter is a small frozen dataclass around its model config: hashable, so it is
a static argument of jitted functions. Training, decoding, checkpoints, serving
and the CLI talk to an adapter and never to a network directly:

- variables: ``init(rng)``, ``abstract_variables()``, ``parameter_rows()``;
- training: ``loss_sums(variables, batch, ...)`` -> (metric sums, updated mutable
  collections such as BatchNorm statistics); the batch format is the task's;
  ``train_flops(batch)``: the analytic FLOPs of a step (MFU in the training log);
- decoding: ``start_decoding(variables, tokens, lengths, max_new_tokens)`` prefills a
  batch of right-padded prompts into the cache and returns the first logits (B, V)
  and the cache (per-row positions inside); ``decode_step(variables, tokens (B,),
  cache)`` returns the next logits and cache; ``decode_steps`` feeds several tokens in one
  forward and ``keep_steps`` keeps the cache after each row's first n of them (verifying
  speculative drafts), ``draft_room`` makes room for them;
- continuous batching: ``slot_prefill`` (prompts -> first logits and cache rows of a fixed
  layout), ``slot_insert`` (rows into free slots), ``slot_step`` (one step over all slots);
- serving: ``prompts`` (how texts become prompt ids, how long they may be) and
  ``serving_signature()`` describe what the generate function takes;
- prompt-state reuse (``serving.prefix_cache``): ``reuse`` says what a prefill leaves
  that a later prompt can start from; ``prompt_states(cache, rows)`` cuts it per row out
  of a prefill's cache, ``join_states`` batches such states, and ``start_from_states``
  is ``start_decoding`` starting from them.

``task`` is the task object (``nety_jax.tasks``: data, validation scores, prompts),
named for each architecture in ``models/registry.py``. Two tasks share all of the
above: replies to a source (batches ``src``, ``src_len``, ``tgt_in``, ``targets``)
and continuations of a text (``models/lm.py``: batches ``tokens``, ``targets``).
"""
from __future__ import annotations

import abc
import dataclasses
import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nety_jax.config.sections import ModelConfig
from nety_jax.layers.remat import Remat

Variables = dict


def count_params(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


@dataclasses.dataclass(frozen=True)
class Model(abc.ABC):
    cfg: ModelConfig
    remat: Remat = Remat()  # what training's backward pass recomputes (train.remat; layers/remat.py)

    @property
    def task(self):
        """The task this architecture trains for (``nety_jax.tasks.Task``)."""
        from nety_jax.models.registry import task_of
        return task_of(self.cfg.arch)

    # -- the network -------------------------------------------------------------------------
    @abc.abstractmethod
    def network(self, axis_name: Optional[str] = None):
        """The flax module (``axis_name``: the device axis its batch statistics average over)."""

    @abc.abstractmethod
    def example_batch(self, batch: int = 2, length: int = 8) -> dict:
        """A training batch of the task's format (shapes for initialisation)."""

    # -- variables ---------------------------------------------------------------------------
    def init(self, rng: jax.Array) -> Variables:
        net = self.network()
        batch = self.example_batch()
        init = jax.jit(lambda r: nn.unbox(net.init({"params": r}, **self._call_args(batch), train=False)))
        return dict(init(rng))

    def abstract_variables(self) -> Variables:
        return dict(nn.unbox(self._boxed_abstract_variables()))

    def _boxed_abstract_variables(self) -> Variables:
        net = self.network()
        batch = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                       self.example_batch())
        return jax.eval_shape(lambda r, b: net.init({"params": r}, **self._call_args(b), train=False),
                              jax.random.PRNGKey(0), batch)

    def logical_axes(self) -> Variables:
        """The logical axis names of every variable (``layers.partitioning``), as PartitionSpecs of
        names in the variables' tree; variables without names (batch statistics) get ``P()``."""
        return dict(nn.get_partition_spec(self._boxed_abstract_variables()))

    def parameter_rows(self) -> list[tuple[str, int]]:
        """(module, parameter count) rows for ``nety-jax info``, the total last."""
        params = self.abstract_variables()["params"]
        rows = [(name, count_params(params[name])) for name in sorted(params)]
        return rows + [("total", count_params(params))]

    @abc.abstractmethod
    def _call_args(self, batch: dict) -> dict:
        """Keyword arguments of the network's ``__call__`` for a batch."""

    # -- training ----------------------------------------------------------------------------
    def logits(self, variables: Variables, batch: dict, *, train: bool = False,
               rng: Optional[jax.Array] = None, axis_name: Optional[str] = None):
        """Teacher-forced (B, T, V) float32 logits and the updated mutable collections."""
        net = self.network(axis_name)
        mutable = [k for k in variables if k != "params"] if train else False
        rngs = {"dropout": rng} if rng is not None else {}
        out = net.apply(variables, **self._call_args(batch), train=train, rngs=rngs, mutable=mutable)
        if mutable is False:
            return out, {}
        logits, updates = out
        return logits, dict(updates)

    def loss_sums(self, variables: Variables, batch: dict, *, train: bool = False,
                  rng: Optional[jax.Array] = None, axis_name: Optional[str] = None,
                  label_smoothing: float = 0.0):
        from nety_jax.layers.losses import cross_entropy_sums, token_mask
        logits, updates = self.logits(variables, batch, train=train, rng=rng, axis_name=axis_name)
        sums = cross_entropy_sums(logits, batch["targets"], token_mask(batch), label_smoothing)
        return sums, updates

    def train_flops(self, batch: dict) -> Optional[float]:
        """Analytic FLOPs of one training step (forward + backward) on ``batch`` (its shapes only:
        padded positions count, they are computed); None where the architecture has no count."""
        return None

    # -- decoding ----------------------------------------------------------------------------
    @abc.abstractmethod
    def start_decoding(self, variables: Variables, tokens: jax.Array, lengths: jax.Array,
                       max_new_tokens: int) -> tuple[jax.Array, Any]:
        """Right-padded prompts (B, S) with lengths (B,) -> (first logits (B, V), cache)."""

    @abc.abstractmethod
    def decode_step(self, variables: Variables, tokens: jax.Array, cache) -> tuple[jax.Array, Any]:
        """(B,) last tokens -> (next logits (B, V) float32, cache)."""

    # -- verifying drafts (speculative decoding) -------------------------------------------------
    def draft_room(self, cache, extra: int):
        """The cache with room for ``extra`` positions past the last one decoding writes: a
        verification feeds a row's draft even where its tokens will not all be kept."""
        return cache

    def decode_steps(self, variables: Variables, tokens: jax.Array, cache) -> tuple[jax.Array, Any]:
        """(B, T) tokens fed in order -> (logits (B, T, V) float32, ``pending``): logits[:, i]
        follow tokens[:, :i + 1]. ``keep_steps(pending, n)`` then gives the cache after each
        row's first n tokens. This default runs ``decode_step`` T times and keeps every cache."""
        def one(c, token):
            logits, c = self.decode_step(variables, token, c)
            return c, (logits, c)
        _, (logits, caches) = jax.lax.scan(one, cache, tokens.T)
        return logits.swapaxes(0, 1), caches

    def keep_steps(self, pending, n: jax.Array):
        """The cache after each row's first ``n`` (B,) >= 1 tokens of a ``decode_steps`` call."""
        rows = jnp.arange(n.shape[0])
        return jax.tree_util.tree_map(lambda x: x[n - 1, rows], pending)

    # -- continuous batching (serving/continuous.py, decoding/slots.py) -----------------------
    # A fixed number of decode slots share one cache whose shapes never depend on a request:
    # rows are prefilled into that layout, inserted into free slots, and stepped together.
    @abc.abstractmethod
    def slot_prefill(self, variables: Variables, tokens: jax.Array, lengths: jax.Array,
                     source_len: int) -> tuple[jax.Array, Any]:
        """Right-padded prompts (B, S) with lengths (B,) -> (first logits (B, V), cache rows in
        the slot layout: every leaf batch-first, shaped by the model's context and
        ``source_len`` (the longest prompt served) only, never by S), as ``start_decoding``
        with room for the longest reply the model can give after each prompt."""

    def slot_prompt_length(self, length: int, source_len: int) -> int:
        """The prompt width a slot prefill compiles for, given the bucketed ``length`` of the
        longest prompt in it: that bucket, or ``source_len`` where the slot layout pads to it
        anyway (one program instead of one per bucket)."""
        return length

    def slot_insert(self, cache, rows, slots: jax.Array):
        """Writes the cache ``rows`` (B', ...) into ``cache`` (S, ...) at ``slots`` (B',); a slot
        index out of range (>= S) drops its row (padding rows of a bucketed prefill)."""
        return jax.tree_util.tree_map(lambda c, r: c.at[slots].set(r.astype(c.dtype), mode="drop"), cache, rows)

    def slot_step(self, variables: Variables, tokens: jax.Array, cache, live: jax.Array):
        """``decode_step`` over every slot (tokens (S,)); rows not ``live`` (free or finished)
        keep their per-row counters (the rank-1 leaves: positions), so an idle slot never
        walks past its cache. What such a row writes elsewhere is overwritten on insert."""
        logits, new = self.decode_step(variables, tokens, cache)
        keep = lambda n, o: jnp.where(live, n, o) if n.ndim == 1 else n
        return logits, jax.tree_util.tree_map(keep, new, cache)

    def slot_memory(self, prompt_width: int, source_len: int) -> int:
        """How many memory positions the slots read when the widest prompt among them was
        prefilled at ``prompt_width`` (a seq2seq model's encoder memory, padded to the layout's
        ``source_len``): a decode chunk then reads only those (``slot_narrow``). 0: all of them
        (the prompt fills the layout, or the layout has no memory axis)."""
        return 0

    def slot_narrow(self, cache, size: int):
        """The slot cache with its memory cut to the first ``size`` positions (every position a
        live slot reads: the rest are masked, so the step's outputs are the same)."""
        return cache

    def slot_widen(self, full, narrow):
        """``narrow`` (a ``slot_narrow`` of ``full`` after some steps) with ``full``'s memory back:
        a step never writes the memory."""
        return narrow

    # -- prompt-state reuse (a prefix cache) ---------------------------------------------------
    # "none": nothing; "prefix": the state after a prompt's first P tokens continues with the rest
    # (start_from_states gets the suffixes); "whole": the state of a whole padded prompt is reused
    # as it is (start_from_states gets the same prompts again).
    reuse = "none"
    states_cut = False  # cut_state works: a prompt's state also serves prompts sharing its start

    def prompt_states(self, cache, rows: int) -> list:
        """The reusable state of each of the first ``rows`` prompts, from the cache that
        ``start_decoding`` (or ``start_from_states``) returned; one batch-1 tree per row, in
        buffers of its own (the cache itself is donated to the decoding loop)."""
        raise NotImplementedError(f"{type(self).__name__} reuses no prompt state")

    def cut_state(self, state, n: int) -> Any:
        """A "prefix" state of P tokens as the state of its first ``n`` < P tokens (only where
        ``states_cut``: a recurrence keeps its last carry only)."""
        raise NotImplementedError(f"{type(self).__name__} cannot cut a prompt state")

    def join_states(self, states: list, batch: int) -> Any:
        """Per-row states (None: nothing cached, the row starts from scratch) -> one batch of
        ``batch`` rows for ``start_from_states`` (rows past ``len(states)`` are fillers)."""
        raise NotImplementedError(f"{type(self).__name__} reuses no prompt state")

    def start_from_states(self, variables: Variables, states, tokens: jax.Array, lengths: jax.Array,
                          max_new_tokens: int) -> tuple[jax.Array, Any]:
        """``start_decoding`` from joined states: for "prefix", ``tokens`` (B, S) are what follows
        each row's state (``lengths`` >= 1); the result equals prefilling the whole prompts."""
        raise NotImplementedError(f"{type(self).__name__} reuses no prompt state")

    def slot_prefill_from(self, variables: Variables, states, tokens: jax.Array, lengths: jax.Array,
                          source_len: int) -> tuple[jax.Array, Any]:
        """``start_from_states`` whose cache rows take the slot layout of continuous batching
        (``slot_prefill``: the same logits and rows as it gives for the whole prompts)."""
        raise NotImplementedError(f"{type(self).__name__} reuses no prompt state")

    # -- serving -----------------------------------------------------------------------------
    @property
    def prompts(self):
        """How prompt texts become ids for ``start_decoding`` (the task's ``prompts``)."""
        return self.task.prompts(self.cfg)

    def serving_signature(self) -> dict:
        """What the exported / served generate function takes and returns."""
        return {"task": self.task.name, "arch": self.cfg.arch,
                "inputs": {"tokens": "int32[batch, length], right-padded with 0",
                           "lengths": "int32[batch]"},
                "prompt": self.prompts.kind,
                "outputs": {"tokens": "int32[batch, max_new_tokens], 0 after <eos>",
                            "lengths": "int32[batch]", "scores": "float32[batch]"}}


def last_real(x: jax.Array, lengths: jax.Array) -> jax.Array:
    """(B, T, ...) -> (B, ...) at each row's last real position."""
    idx = jnp.maximum(lengths, 1) - 1
    return jnp.take_along_axis(x, idx.reshape((-1,) + (1,) * (x.ndim - 1)), axis=1)[:, 0]


@functools.partial(jax.jit, static_argnums=1)
def row_of(tree, i: int):
    """Row ``i`` of a batch-first tree, as a batch of one in buffers of its own (a slice can be
    its whole array, and decoding loops donate their caches)."""
    return jax.tree_util.tree_map(lambda x: jnp.copy(x[i:i + 1]), tree)


def stack_rows(trees: list):
    """Batch-of-one trees of equal shapes -> one batch."""
    if len(trees) == 1:
        return trees[0]
    return jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs, axis=0), *trees)
