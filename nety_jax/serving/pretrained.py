"""Loading a run directory for inference: ``load_pretrained(path).generate(texts)``.

Works for every architecture: a seq2seq model replies to its prompts, a language
model continues them. Sampling settings are runtime arrays (a change never
recompiles); a prompt too long for the model is cut with a warning.
"""
from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nety_jax.config import Config
from nety_jax.data.prompts import unencodable, decode_replies, encode_prompts, repeat_rows
from nety_jax.data.tokenizer import Tokenizer
from nety_jax.decoding import SamplingParams, generate_jit
from nety_jax.errors import NetyError
from nety_jax.models import get_model
from nety_jax.runs.files import load_run_tokenizer, read_run_config
from nety_jax.runs.weights import restore_inference_variables
from nety_jax.serving.settings import (check_batch, check_bool, check_int, check_num_samples, check_texts,
                                       fit_prompts, for_these_rows, in_parts, per_sample, resolve, seeds_per_row)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


class Pretrained:
    """A trained model with its config and tokenizer, ready for generation (``generate``,
    ``generate_ids``: ``serving.protocol.InferenceModel``, as an ``ExportedModel``), streaming,
    chat, teacher-forced logits and next-word prediction."""

    def __init__(self, cfg: Config, tokenizer: Tokenizer, variables: dict, step: int = 0,
                 warn: Callable[[str], None] = _stderr):
        self.config, self.tokenizer, self.variables, self.step = cfg, tokenizer, variables, step
        self.model = get_model(cfg.model)
        self.warn = warn
        self._logits = jax.jit(lambda v, batch: self.model.logits(v, batch)[0])
        self.prefix_cache = None

    def use_prefix_cache(self, megabytes: float) -> None:
        """Keeps the prefill state of recent prompts, up to ``megabytes`` (0: none), for prompts
        that start with them (``serving.prefix_cache``); sampled generation and streaming use it."""
        from nety_jax.serving.prefix_cache import make_cache
        if isinstance(megabytes, bool) or not isinstance(megabytes, (int, float)) \
                or not 0 <= megabytes < float("inf"):
            raise NetyError(f"prefix cache size must be a number of megabytes >= 0, got {megabytes!r}")
        from nety_jax.training.memory import device_limit
        limit, where = device_limit(self.config.train, 1)
        if limit is not None and megabytes * 2 ** 20 > limit:  # a bound that never binds: the server grew until killed
            raise NetyError(f"prefix cache size (--prefix-cache-mb) {megabytes:g} MB is more than a device holds "
                            f"({limit / 2 ** 20:,.0f} MB, {where}): it would fill the memory before evicting "
                            "anything; give at most that")
        self.prefix_cache = make_cache(self.model, megabytes)

    def _start(self, req, batch, params):
        """The loop state after the prefill and the first token (through the prefix cache)."""
        from nety_jax.serving.prefix_cache import prefill
        return prefill(self.prefix_cache, self.model, self.variables, batch.tokens, batch.lengths,
                       batch.count, params, req.spec, self.config.data.bucket_multiple)

    @property
    def task(self):
        """The model's task object (``nety_jax.tasks``: how prompts and chats become ids)."""
        return self.model.task

    @property
    def prompts(self):
        """The task's prompt policy (``tasks/prompting.py``: how a text becomes ids, how long it may be)."""
        return self.model.prompts

    def generate(self, texts: Sequence[str], seed=0, num_samples: int = 1, with_prompt: bool = False,
                 batch_size: Optional[int] = None, **settings) -> list[list[str]]:
        """Replies (seq2seq) or continuations (language models), ``num_samples`` per text;
        ``with_prompt``: each continuation joined to its prompt (``nety-jax complete``);
        ``batch_size``: at most that many rows (texts times samples) through the model at once
        (None: all), with the same replies as one call.

        Settings: temperature, top_k, top_p, max_new_tokens (each a value or one per text),
        beam_size, length_penalty, min_new_tokens, no_repeat_ngram; ``seed``: one for the
        batch or one per text."""
        num_samples, with_prompt = check_num_samples(num_samples), check_bool("with_prompt", with_prompt)
        part = lambda texts, seed, settings, first_row, samples: self._generate(
            texts, seed, samples, with_prompt, settings, first_row, num_samples)
        return in_parts(part, texts, seed, num_samples, batch_size, settings,
                        split_samples=_beam_size(settings, self.config) <= 1)

    def _generate(self, texts: Sequence[str], seed, num_samples: int, with_prompt: bool, settings: dict,
                  first_row: int, of: int) -> list[list[str]]:
        """``num_samples`` rows per text from row ``first_row``, of ``of`` samples per text in
        all (fewer: a share of one text's samples, ``in_parts``)."""
        beam = _beam_size(settings, self.config)
        if num_samples > 1 and beam > 1:
            return self._n_best(texts, seed, num_samples, beam, with_prompt, settings)
        req, batch, params = self._prepare(texts, seed, num_samples, settings, first_row, of)
        if first_row == 0 and of > 1 and req.spec.greedy_only:
            self.warn(f"warning: num_samples={of} with greedy decoding (temperature 0) gives "
                      f"{of} identical replies; set a temperature > 0, or a beam size for its best")
        if self.prefix_cache is not None:  # the same loop, after a prefill through the cache
            from nety_jax.decoding.generation import continue_stream, stream_result
            state = continue_stream(self.variables, self._start(req, batch, params), req.spec.max_new_tokens,
                                    model=self.model, spec=req.spec)
            out = stream_result(state, req.spec)
        else:
            out = generate_jit(self.variables, jnp.asarray(batch.tokens), jnp.asarray(batch.lengths),
                               params, model=self.model, spec=req.spec)
        replies = decode_replies(self.tokenizer, out["tokens"], batch.count, batch if with_prompt else None)
        return [replies[i * num_samples: (i + 1) * num_samples] for i in range(len(texts))]

    def _n_best(self, texts: Sequence[str], seed, n: int, beam: int, with_prompt: bool,
                settings: dict) -> list[list[str]]:
        """Beam search's ``n`` best distinct replies per text (``num_samples`` with a beam), as
        HF's ``num_return_sequences``: one search per text, not ``n`` identical ones."""
        if n > beam:
            raise NetyError(f"num_samples={n} is more than beam_size={beam}: beam search keeps its "
                            f"{beam} best replies; raise the beam size or ask for fewer")
        req, batch, params = self._prepare(texts, seed, 1, settings)  # the seed is checked, not used
        out = generate_jit(self.variables, jnp.asarray(batch.tokens), jnp.asarray(batch.lengths),
                           params, model=self.model, spec=req.spec)
        tokens = np.asarray(out["beam_tokens"])[: batch.count, :n].reshape(batch.count * n, -1)
        replies = decode_replies(self.tokenizer, tokens, batch.count * n,
                                 repeat_rows(batch, n) if with_prompt else None)
        return [replies[i * n: (i + 1) * n] for i in range(len(texts))]

    def _prepare(self, texts: Sequence[str], seed, num_samples: int, settings: dict, first_row: int = 0,
                 of: Optional[int] = None):
        """(request, prompt batch, sampling params) for ``num_samples`` rows per text (of ``of`` in
        all: a cut prompt is named once, by its first share)."""
        of = of or num_samples
        n = len(texts) * num_samples
        req = resolve(self.config.decode, self.model.prompts, n,
                      {k: per_sample(v, num_samples) for k, v in settings.items()})
        repeated = [t for t in texts for _ in range(num_samples)]
        batch = encode_prompts(self.model.prompts, self.tokenizer, repeated, self.config.data,
                               max(req.rows["max_new_tokens"]))  # cut for what is asked, not the compiled maximum
        req = for_these_rows(fit_prompts(req, batch.tokens.shape[1], self.model.prompts))
        for i in sorted({i // num_samples for i in batch.cut} if first_row % of == 0 else ()):
            self.warn(f"warning: prompt {first_row // of + i + 1} was cut to {batch.tokens.shape[1]} tokens "
                      "(the longest this model takes)")
        b = batch.tokens.shape[0]
        fill = lambda v: v + [v[0]] * (b - len(v))
        params = SamplingParams.create(
            b, **{k: fill(v) for k, v in req.rows.items()},
            seed=_fill_seed(seeds_per_row(seed, len(texts), num_samples), b), first_row=first_row)
        return req, batch, params

    def generate_ids(self, texts: Sequence[str], seed=0, num_samples: int = 1, **settings) -> dict:
        """``generate``'s ids before decoding: ``{"tokens": (R, N), "lengths": (R,), "scores":
        (R,)}`` numpy (beam search adds its beams), R = len(texts) * num_samples rows, each text's
        samples in turn, padded after <eos>; the same settings as ``generate``."""
        texts, num_samples = check_texts(texts), check_num_samples(num_samples)
        if not texts:
            raise NetyError("texts: no prompt given")
        req, batch, params = self._prepare(texts, seed, num_samples, settings)
        out = generate_jit(self.variables, jnp.asarray(batch.tokens), jnp.asarray(batch.lengths),
                           params, model=self.model, spec=req.spec)
        return {k: np.asarray(v)[:batch.count] for k, v in out.items()}

    def stream(self, texts: Sequence[str], seed=0, chunk: int = 8, **settings):
        """Yields the generated ids so far, (rows, tokens) numpy, every ``chunk`` tokens: the
        same loop as ``generate`` (same tokens for the same seed), paused between chunks so
        the caller can show progress or stop. Beam search yields once, at the end."""
        from nety_jax.decoding.generation import continue_stream, stream_result
        texts, chunk = check_texts(texts), check_int("chunk", chunk, 1)
        if not texts:
            return
        req, batch, params = self._prepare(texts, seed, 1, settings)
        if req.spec.beam_size > 1:
            yield self.generate_ids(texts, seed, **settings)["tokens"]
            return
        state = self._start(req, batch, params)
        while True:
            out = stream_result(state, req.spec)
            yield np.asarray(out["tokens"])[:batch.count]
            if bool(np.all(np.asarray(state.done))) or int(state.pos) >= req.spec.max_new_tokens:
                return
            state = continue_stream(self.variables, state, int(state.pos) + chunk, model=self.model,
                                    spec=req.spec)

    def chat_prompt(self, messages: Sequence[tuple[str, str]], max_new_tokens: Optional[int] = None) -> str:
        """A conversation ((role, text) pairs) as the task makes it one prompt (a language model
        continues the whole history, resent every turn: the prefix cache spares its prefill), its
        oldest messages left out once it no longer fits with ``max_new_tokens`` more."""
        if not isinstance(messages, (list, tuple)) or not messages or not all(
                isinstance(m, (list, tuple)) and len(m) == 2 and all(isinstance(x, str) for x in m) for m in messages):
            raise NetyError("messages must be a non-empty list of (role, text) pairs of strings")
        if max_new_tokens is not None:
            check_int("max_new_tokens", max_new_tokens, 1, self.model.prompts.max_new_tokens())
        prompts, data_cfg = self.model.prompts, self.config.data
        limit = prompts.limit(data_cfg, max_new_tokens or self.config.decode.max_new_tokens)
        start = 0
        while True:
            prompt = self.model.task.chat_prompt(messages[start:])
            if start >= len(messages) - 1 or len(prompts.ids(self.tokenizer, prompt, data_cfg)) <= limit:
                return prompt
            start += 1

    def logits(self, batch: dict) -> np.ndarray:
        """Teacher-forced (B, T, V) logits in eval mode for a batch of the model's format:
        seq2seq ``{"src", "src_len", "tgt_in"}``, language models ``{"tokens"}``."""
        batch = check_batch(batch, self.model.example_batch(), self.model.cfg.vocab_size)
        return np.asarray(self._logits(self.variables, {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}))

    def predict_next(self, text: str, top_k: int = 5) -> list[tuple[str, float]]:
        """Language models: the ``top_k`` likeliest next words after ``text`` as (word,
        probability) pairs, likeliest first (``nety-jax predict-next``)."""
        from nety_jax.serving.next_word import predict_next
        if not isinstance(text, str) or not text.strip() or unencodable(text):
            why = f"a string, got {type(text).__name__}" if not isinstance(text, str) else \
                unencodable(text) or "empty: give the start of a sentence"
            raise NetyError(f"text is {why}" if "got" not in why else f"text must be {why}")
        return predict_next(self, text, check_int("top_k", top_k, 1, self.model.cfg.vocab_size))


def _beam_size(settings: dict, cfg: Config):
    beam = settings.get("beam_size")
    beam = cfg.decode.beam_size if beam is None else beam
    return beam if isinstance(beam, int) else 1  # a wrong type is reported by resolve()


def _fill_seed(seed, b: int):
    return seed if isinstance(seed, int) else seed + [seed[0]] * (b - len(seed))


def load_pretrained(workdir: str, step: Optional[int] = None,
                    warn: Callable[[str], None] = _stderr, prefix_cache_mb: float = 0,
                    mesh_tensor: int = 1) -> Pretrained:
    """Loads ``workdir`` (a ``nety-jax train``, ``import-torch`` or ``quantize`` output), whatever
    mesh or number of processes wrote it; ``prefix_cache_mb``: see ``Pretrained.use_prefix_cache``
    (0: no prefix cache); ``mesh_tensor``: tensor-parallel generation over that many of this
    process's devices (1: the whole model on one device)."""
    cfg = read_run_config(workdir)
    tokenizer = load_run_tokenizer(workdir, cfg)
    abstract = _placed_abstract(get_model(cfg.model), cfg, mesh_tensor)
    variables, step = restore_inference_variables(workdir, cfg, abstract, step, warn)
    model = Pretrained(cfg, tokenizer, variables, step, warn)
    model.use_prefix_cache(prefix_cache_mb)
    return model


def _placed_abstract(model, cfg: Config, mesh_tensor: int) -> dict:
    """The model's abstract variables, with their shardings on a ('tensor',) mesh of
    ``mesh_tensor`` devices by the run's ``train.mesh_rules`` (each device then restores and
    holds only its shards; the jitted loops follow the variables' shardings). Weights one
    device cannot hold are refused here, before anything is read, naming the split that fits."""
    from nety_jax.training.memory import check_weights
    abstract = model.abstract_variables()
    names = None

    def placed(n: int) -> dict:
        nonlocal names
        if n == 1 and not isinstance(n, bool):
            return abstract
        from nety_jax.training import mesh as meshlib
        names = model.logical_axes() if names is None else names
        return meshlib.placed_variables(names, abstract, meshlib.inference_mesh(n), meshlib.rules_of(cfg.train))

    result = placed(mesh_tensor)  # an impossible split is refused first
    check_weights(placed, cfg.train, mesh_tensor)
    return result
