"""The config sections every architecture shares: model basics, data, train, decode.

Each architecture's model section subclasses ``ModelConfig`` in its own package
(``nety_jax/models/<arch>/config.py``); ``model.arch`` picks it.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from nety_jax.config import fields as F
from nety_jax.errors import ConfigError

PAD_ID, SOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
MAX_POSITIONS = 1 << 16  # position tables and caches beyond this are a typo, not a model
MAX_VOCAB = 1 << 22
MAX_SEED = 2 ** 63 - 1  # what a PRNG key takes (and the server's and the API's seeds)
INT32_MAX = 2 ** 31 - 1


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Fields every architecture has. Frozen and hashable: a static jit argument."""

    arch: str = ""  # each architecture's section sets its name (models/registry.py)
    vocab_size: int = 8000  # replaced by the trained tokenizer's size
    max_len: int = 512  # positions the model has (decoder positions, LM context)
    dropout: float = 0.1
    dtype: str = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)
    quant: str = "none"  # none | int8 (weight-only, written by `nety-jax quantize`; inference only)

    def validate(self) -> None:
        s = "model"
        F.check_types(s, self)
        F.positive(s, self, "vocab_size", "max_len")
        if self.vocab_size <= UNK_ID:
            raise ConfigError(f"model.vocab_size={self.vocab_size} must be > {UNK_ID} (4 special ids)")
        F.at_most(s, self, "vocab_size", MAX_VOCAB, "embedding tables of that size do not fit")
        F.at_most(s, self, "max_len", MAX_POSITIONS, "position tables and caches of that length do not fit")
        F.choice(s, "dtype", self.dtype, ("float32", "bfloat16"))
        F.choice(s, "quant", self.quant, ("none", "int8"))
        F.probability(s, self, "dropout")

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    format: str = "auto"  # auto (from the extension) | jsonl | tsv | text
    # pairs (seq2seq)
    input_key: str = "input"
    target_key: str = "target"
    max_src_len: int = 50
    max_tgt_len: int = 50  # tokens after <sos>, <eos> included
    src_eos: bool = True  # end sources with <eos>
    # plain text (language models): windows of seq_len + 1 tokens every `stride` tokens
    seq_len: int = 0  # 0: model.max_len
    stride: int = 0  # 0: seq_len (no overlap)
    packing: bool = False  # rows of whole lines kept apart (segments) instead of windows of the stream
    # both
    val_fraction: Optional[float] = None  # None: the task's default (0.05 of the pairs, 0.1 of a text)
    bucket_multiple: int = 8  # pad batch lengths up to a multiple of this (few shapes, few compiles)
    tokenizer: str = "sentencepiece"  # sentencepiece | word (NETY's vocabulary) | hf (byte-level BPE, `tokenizers`)
    word_split: str = "whitespace"  # word tokenizer: whitespace (NETY) | punctuation (split off)
    spm_model_type: str = "unigram"  # unigram | bpe
    vocab_size: int = 8000
    lowercase: bool = False
    # subword regularization (Kudo 2018): each training batch re-segments its pairs by sampling
    # SentencePiece segmentations (unigram: smoothing alpha; bpe: BPE-dropout rate); 0: off
    subword_alpha: float = 0.0

    def validate(self) -> None:
        s = "data"
        F.check_types(s, self)
        F.choice(s, "format", self.format, ("auto", "jsonl", "tsv", "text"))
        F.choice(s, "tokenizer", self.tokenizer, ("sentencepiece", "word", "hf"))
        F.choice(s, "spm_model_type", self.spm_model_type, ("unigram", "bpe"))
        F.choice(s, "word_split", self.word_split, ("whitespace", "punctuation"))
        F.positive(s, self, "max_src_len", "max_tgt_len", "bucket_multiple")
        F.positive(s, self, "seq_len", "stride", allow_zero=True)
        F.at_most(s, self, "max_src_len", MAX_POSITIONS, "longer sources do not fit")
        F.at_most(s, self, "max_tgt_len", MAX_POSITIONS, "longer targets do not fit")
        if self.vocab_size <= 8:
            raise ConfigError(f"data.vocab_size={self.vocab_size} must be > 8")
        F.at_most(s, self, "vocab_size", MAX_VOCAB, "embedding tables of that size do not fit")
        if self.val_fraction is not None and not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction={self.val_fraction} must be in [0, 1)")
        F.probability(s, self, "subword_alpha")
        if self.subword_alpha > 0 and self.tokenizer != "sentencepiece":
            raise ConfigError(f"data.subword_alpha={self.subword_alpha} samples SentencePiece "
                              f"segmentations: it needs data.tokenizer=sentencepiece, not {self.tokenizer!r}")
        if not self.input_key or not self.target_key:
            raise ConfigError("data.input_key and data.target_key must be non-empty")


MESH_AXES = ("data", "fsdp", "tensor")
MESH_RULES = ("batch=data+fsdp", "vocab=tensor", "heads=tensor", "mlp=tensor", "gates=tensor",
              "position=tensor", "embed=fsdp", "hidden=fsdp", "hidden=tensor", "directions=")


def parse_mesh_rules(rules) -> tuple:
    """``("embed=fsdp", "batch=data+fsdp", "x=")`` -> ``(("embed", "fsdp"), ("batch", ("data",
    "fsdp")), ("x", None))``: flax's logical axis rules."""
    parsed = []
    for rule in rules:
        name, sep, axes = str(rule).partition("=")
        mesh = tuple(a.strip() for a in axes.split("+") if a.strip())
        bad = [a for a in mesh if a not in MESH_AXES]
        if not sep or not name.strip() or bad or len(set(mesh)) != len(mesh):
            raise ConfigError(f"train.mesh_rules: {rule!r} must read NAME=AXIS[+AXIS] with axes among "
                              f"{', '.join(MESH_AXES)} (or NAME= for replicated)")
        parsed.append((name.strip(), None if not mesh else mesh[0] if len(mesh) == 1 else mesh))
    return tuple(parsed)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    steps: int = 2000
    batch_size: int = 32  # global batch, split over devices and micro-batches
    grad_accum: int = 1  # micro-batches per step (gradients weighted by tokens)
    optimizer: str = "adamw"  # adamw | adam
    learning_rate: float = 5e-4
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-9
    clip_norm: float = 1.0  # 0 disables clipping
    schedule: str = "warmup_cosine"  # constant | linear | warmup_cosine | warmup_rsqrt
    warmup_steps: int = 200
    end_lr_fraction: float = 0.1  # cosine / linear end value as a fraction of the peak
    label_smoothing: float = 0.1
    parallel: str = "none"  # none | pmap | shard_map | mesh
    # mesh: devices along (data, fsdp, tensor); -1 takes the devices the other two leave
    mesh_data: int = -1
    mesh_fsdp: int = 1  # parameters and optimizer state sharded over this axis
    mesh_tensor: int = 1  # attention heads, MLP width, recurrent gates, vocabulary split
    # logical axis name (layers/partitioning.py) = mesh axes joined by '+' (empty: replicated);
    # the first rule whose mesh axes are still free in an array wins
    mesh_rules: tuple = MESH_RULES
    peak_tflops: float = 0.0  # one device's peak, for MFU; 0: the datasheet table (measured on a CPU)
    # activation rematerialisation (layers/remat.py): none | full | dots (keep the matmul outputs);
    # the recurrent layers' unit: layer | step
    remat: str = "none"
    remat_scan: str = "layer"
    memory_limit_gb: float = 0.0  # what one device may hold (memory planner); 0: detected (CPU: host memory)
    log_every: int = 20
    eval_every: int = 200
    eval_batches: int = 8  # validation batches per evaluation (0: all)
    bleu_samples: int = 32  # validation pairs answered greedily for BLEU / chrF (seq2seq)
    checkpoint_every: int = 200
    keep_latest: int = 2
    keep_best: int = 1

    def validate(self) -> None:
        s = "train"
        F.check_types(s, self)
        F.positive(s, self, "steps", "batch_size", "grad_accum", "learning_rate", "log_every",
                   "eval_every", "checkpoint_every", "keep_latest", "eps")
        F.positive(s, self, "warmup_steps", "clip_norm", "weight_decay", "eval_batches",
                   "bleu_samples", "keep_best", "seed", "peak_tflops", "memory_limit_gb",
                   allow_zero=True)
        F.at_most(s, self, "batch_size", 1 << 20, "batches that large do not fit")
        F.at_most(s, self, "seed", MAX_SEED, "a PRNG seed is a 64-bit signed integer")
        F.choice(s, "optimizer", self.optimizer, ("adamw", "adam"))
        F.choice(s, "schedule", self.schedule, ("constant", "linear", "warmup_cosine", "warmup_rsqrt"))
        F.choice(s, "parallel", self.parallel, ("none", "pmap", "shard_map", "mesh"))
        F.choice(s, "remat", self.remat, ("none", "full", "dots"))
        F.choice(s, "remat_scan", self.remat_scan, ("layer", "step"))
        self._validate_mesh()
        F.probability(s, self, "label_smoothing", "end_lr_fraction", "b1", "b2")
        for name in ("b1", "b2"):  # Adam divides by 1 - b ** step: b = 1 is NaN at the first step
            if getattr(self, name) == 1.0:
                raise ConfigError(f"train.{name}=1.0 must be < 1 (Adam's moment estimates divide by "
                                  f"1 - {name} ** step)")
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"train.batch_size={self.batch_size} is not divisible by "
                              f"train.grad_accum={self.grad_accum}")
        if self.schedule == "warmup_cosine" and self.warmup_steps >= self.steps:
            raise ConfigError(f"train.warmup_steps={self.warmup_steps} must be < train.steps={self.steps}")

    def _validate_mesh(self) -> None:
        if self.mesh_data != -1 and self.mesh_data < 1:
            raise ConfigError(f"train.mesh_data={self.mesh_data} must be >= 1, or -1 (the devices left)")
        F.positive("train", self, "mesh_fsdp", "mesh_tensor")
        if self.parallel != "mesh" and (self.mesh_fsdp > 1 or self.mesh_tensor > 1):
            raise ConfigError(f"train.mesh_fsdp={self.mesh_fsdp} / train.mesh_tensor={self.mesh_tensor} "
                              f"shard over a device mesh: set train.parallel=mesh "
                              f"(not {self.parallel})")
        parse_mesh_rules(self.mesh_rules)


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """Decoding defaults. Static fields shape the compiled program (``max_new_tokens`` is the
    compiled maximum, ``top_k_max`` the widest top-k cut, ``beam_size``); temperature, top-k,
    top-p, the seed and a smaller max_new_tokens are per-row runtime values."""

    max_new_tokens: int = 50
    temperature: float = 0.8  # 0: greedy
    top_k: int = 50  # 0: no top-k cut (full sort, slow path)
    top_p: float = 0.9  # 1: no nucleus cut
    top_k_max: int = 64  # static width of the fast top-k path; larger top_k sorts everything
    beam_size: int = 1  # > 1: beam search (deterministic)
    length_penalty: float = 0.6  # beam search: score / ((5 + len) / 6) ** alpha
    min_new_tokens: int = 0  # <eos> is forbidden before this many tokens
    no_repeat_ngram: int = 0  # 0 disables; n > 0 bans repeating any n-gram
    ignore_eos: bool = False  # benchmarks: always produce max_new_tokens
    speculate: str = "none"  # ngram: draft from the prompt and reply so far, verify in one forward
    draft_tokens: int = 4  # speculation: tokens drafted (and verified together) per step

    def validate(self) -> None:
        s = "decode"
        F.check_types(s, self)
        F.positive(s, self, "max_new_tokens", "beam_size", "top_k_max")
        F.positive(s, self, "temperature", "top_k", "length_penalty", "min_new_tokens",
                   "no_repeat_ngram", allow_zero=True)
        F.at_most(s, self, "max_new_tokens", MAX_POSITIONS, "more positions than any model has")
        F.at_most(s, self, "beam_size", 256, "beams that wide do not fit")
        F.at_most(s, self, "temperature", 100.0, "a higher temperature is uniform noise")
        F.at_most(s, self, "top_k", INT32_MAX, "each row's top-k is an int32; a cut past the vocabulary "
                  "keeps every token, as 0 does")
        F.choice(s, "speculate", self.speculate, ("none", "ngram"))
        F.positive(s, self, "draft_tokens")
        F.at_most(s, self, "draft_tokens", 16, "longer drafts are rarely all accepted")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"decode.top_p={self.top_p} must be in (0, 1]")
        if self.min_new_tokens > self.max_new_tokens:
            raise ConfigError(f"decode.min_new_tokens={self.min_new_tokens} must be <= "
                              f"decode.max_new_tokens={self.max_new_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    def replace(self, **changes) -> "DecodeConfig":
        out = dataclasses.replace(self, **changes)
        out.validate()
        return out
