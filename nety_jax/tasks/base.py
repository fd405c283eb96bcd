"""The task protocol: what a model is trained to do, apart from how its network computes.

Like Gemma's ``gm.data.Seq2SeqTask`` (a transform that owns the formatting,
tokenization and target masks of its examples), a task owns everything about its
data and its prompts that does not depend on the architecture:

- data: ``default_paths()``, ``read(cfg, paths, skip_bad)`` (reading, validation
  and the validation split), ``encode(cfg, tokenizer, corpus, source)`` (datasets
  with ``len()``, ``length(i)`` and ``collate(indices)``), ``batches`` and
  ``eval_batches`` (how they are batched);
- prepared data (``nety-jax prepare``, which never holds the corpus): ``stream`` (the
  examples in file order, read as consumed), ``split_plan`` (which of them are held out,
  and each split's order), ``texts_of`` (what the tokenizer learns from), ``write_shard`` (run in a worker process: encodes and writes one shard) and
  ``open_prepared`` (the datasets streamed from the shards, ``data.streamed``);
- scores: ``extra_metrics`` beyond the loss (BLEU / chrF for replies);
- prompts: ``prompts(model_cfg)`` (how a text becomes prompt ids) and
  ``chat_prompt(messages)`` (how a conversation becomes one prompt text).

A task is a stateless singleton (``tasks.get_task(name)``); an architecture names
its task once, in ``models/registry.py``, and ``get_model(cfg).task`` is the object.
Nothing outside this package branches on a task's name.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Callable, ClassVar, Iterator, Optional, Sequence

import numpy as np

from nety_jax.data.batching import BatchIterator, eval_batches
from nety_jax.data.readers import Skips


@dataclasses.dataclass
class Corpus:
    """Read and split examples: pairs or text lines, as the task reads them."""

    train: list
    val: list
    texts: list[str]  # what the tokenizer is trained on (the training split only)
    skipped: int = 0
    first_error: Optional[str] = None


@dataclasses.dataclass
class DataSplit:
    """Encoded training and validation datasets (``len()``, ``length(i)``, ``collate(indices)``)."""

    train: object
    val: object
    fingerprint: str  # of the encoded training examples: a resumed run checks its data is the same
    description: str
    truncated: int = 0  # examples cut to the configured lengths
    damage: Optional[object] = None  # prepared data under --skip-bad: the damaged records skipped (shards.Damage)


@dataclasses.dataclass
class SplitPlan:
    """Where ``prepare`` puts each example it reads (in file order), and each split's order.

    ``val``: (N,) bool, the held-out examples; ``order``: per split, (n,) the shard record of each
    example of the split's dataset (the order ``read`` gives), or None when it is the file order.
    Shards are written in file order, so the corpus is read once, in a stream."""

    val: np.ndarray
    order: dict


class Task(abc.ABC):
    """One task's data, scores and prompts. A subclass gives its facts as class keywords,
    all of them required (a task that forgets one fails where it is defined)::

        class LanguageModelTask(Task, name="lm", noun="a language model", data_option="--text",
                                data_help="text files", default_val_fraction=0.1,
                                continues_text=True, default_path=default_text_path): ...
    """

    name: ClassVar[str]
    noun: ClassVar[str]  # what a model of this task is called in messages ("a language model")
    data_option: ClassVar[str]  # the `nety-jax train` option that gives its files
    data_help: ClassVar[str]  # what that option takes, for messages
    default_val_fraction: ClassVar[float]  # data.val_fraction when it is not set
    continues_text: ClassVar[bool]  # prompts are prefixes the model continues (complete, predict-next)
    default_path: ClassVar[Callable[[], str]]  # the embedded corpus's path

    def __init_subclass__(cls, *, name: str, noun: str, data_option: str, data_help: str,
                          default_val_fraction: float, continues_text: bool,
                          default_path: Callable[[], str], **kwargs):
        super().__init_subclass__(**kwargs)
        cls.name, cls.noun, cls.data_option, cls.data_help = name, noun, data_option, data_help
        cls.default_val_fraction, cls.continues_text = default_val_fraction, continues_text
        cls.default_path = staticmethod(default_path)

    def __repr__(self) -> str:
        return f"<task {self.name}>"

    # -- data ---------------------------------------------------------------------------------
    def default_paths(self) -> list[str]:
        """The embedded corpus trained on when no file is given."""
        return [self.default_path()]

    def val_fraction(self, data_cfg) -> float:
        """The held-out fraction: ``data.val_fraction``, or the task's default when unset."""
        return self.default_val_fraction if data_cfg.val_fraction is None else data_cfg.val_fraction

    @abc.abstractmethod
    def read(self, cfg, paths: Sequence[str], skip_bad: bool) -> Corpus:
        """Reads and validates ``paths`` (``DataError`` naming ``file:line``; with
        ``skip_bad`` bad lines are counted instead) and splits off the validation part."""

    @abc.abstractmethod
    def encode(self, cfg, tokenizer, corpus: Corpus, source: str) -> DataSplit:
        """Token ids of both splits; ``source`` names the files in the description."""

    @abc.abstractmethod
    def longest_batch(self, cfg) -> dict:
        """A training batch of the largest shapes ``cfg`` allows (zeros; the memory planner's)."""

    def batches(self, dataset, cfg, epoch: int = 0, index: int = 0) -> BatchIterator:
        """Training batches: shuffled, length-bucketed, resumable at ``(epoch, index)``."""
        return BatchIterator(dataset, cfg.train.batch_size, cfg.train.seed, epoch, index)

    def eval_batches(self, dataset, cfg) -> list[dict]:
        """Fixed validation batches (``weight`` 0 on the rows that fill the last one)."""
        if not len(dataset):
            return []
        return eval_batches(dataset, cfg.train.batch_size, cfg.train.eval_batches)

    # -- prepared data ------------------------------------------------------------------------
    TOKENIZER_FIELDS: ClassVar[tuple] = ("tokenizer", "vocab_size", "spm_model_type", "lowercase",
                                         "word_split")

    def resolved_data(self, cfg):
        """``cfg.data`` with the values prepared shards are made with (defaults filled in)."""
        return cfg.data

    def prepared_fields(self, data_cfg) -> tuple:
        """The ``data.*`` fields prepared shards depend on: a config that differs is refused."""
        return self.TOKENIZER_FIELDS

    @abc.abstractmethod
    def stream(self, cfg, paths: Sequence[str], skip_bad: bool, skips: Skips) -> Iterator:
        """The examples of ``paths`` in file order, read as they are consumed (the errors and
        ``--skip-bad`` of ``read``; skipped lines counted in ``skips``)."""

    @abc.abstractmethod
    def no_examples(self, paths: Sequence[str], skips: Skips) -> Exception:
        """The error for files that hold no example."""

    @abc.abstractmethod
    def split_plan(self, cfg, count: int) -> SplitPlan:
        """The validation split of ``count`` examples read in file order: the one ``read`` makes."""

    @abc.abstractmethod
    def texts_of(self, item) -> list[str]:
        """The texts of one example a tokenizer is trained on."""

    @abc.abstractmethod
    def write_shard(self, data_cfg, tokenizer, items: list, path: str) -> dict:
        """Encodes ``items`` and writes them to the shard ``path`` (runs in a worker process);
        returns its counts (``records``, ``examples``, ``tokens``, ``sha256``, ``histogram``)."""

    @abc.abstractmethod
    def open_prepared(self, cfg, directory: str, manifest: dict, damage=None) -> DataSplit:
        """The training and validation datasets read from a prepared directory's shards; with
        ``damage`` (a ``shards.Damage``: ``--skip-bad``) damaged records are counted there and skipped."""

    @abc.abstractmethod
    def example_prompt(self, item) -> str:
        """The prompt text of one read example (a pair's input, a text line), for scripts
        that compare replies on held-out examples."""

    # -- scores -------------------------------------------------------------------------------
    def extra_metrics(self, model, variables, cfg, tokenizer, val_dataset) -> dict:
        """Validation scores beyond the teacher-forced ones (``variables`` on this host)."""
        return {}

    # -- prompts ------------------------------------------------------------------------------
    @abc.abstractmethod
    def prompts(self, model_cfg):
        """The prompt policy (``tasks.prompting``): how a prompt text becomes ids, how long
        it may be and how it is cut."""

    @abc.abstractmethod
    def chat_prompt(self, messages: Sequence[tuple[str, str]]) -> str:
        """A conversation of (role, content) messages -> the one prompt text answered."""

