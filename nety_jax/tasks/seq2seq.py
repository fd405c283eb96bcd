"""Sequence to sequence: (input, target) pairs in, a reply to a source out.

Pairs are read from one JSONL or TSV file (``nety_jax.data.pairs``), split at random with
``train.seed``, and encoded as sources (+ <eos>) and ``<sos> target <eos>``; a
batch is ``{"src", "src_len", "tgt_in", "targets"}``. Validation also answers the
first ``train.bleu_samples`` sources greedily and scores the replies with
sacreBLEU. A prompt is a source (its start kept when too long); in a chat the
last user message is the source.
"""
from __future__ import annotations

import hashlib
import os
from typing import Sequence

import numpy as np

from nety_jax.data.pairs import (default_corpus_path, encode_pairs, iter_pairs, no_pairs, read_pairs,
                                 split_order, split_pairs)
from nety_jax.data.shards import ShardReader, ShardWriter, fingerprint, length_histogram
from nety_jax.data.streamed import PairShards
from nety_jax.errors import ConfigError, DataError
from nety_jax.tasks.base import Corpus, DataSplit, SplitPlan, Task
from nety_jax.tasks.prompting import SourcePrompts


class Seq2SeqTask(Task, name="seq2seq", noun="a seq2seq model", data_option="--data", data_help="pairs",
                  default_val_fraction=0.05, continues_text=False, default_path=default_corpus_path):
    def read(self, cfg, paths: Sequence[str], skip_bad: bool) -> Corpus:
        _one_file(paths)
        report = read_pairs(paths[0], cfg.data, skip_bad=skip_bad)
        train, val = split_pairs(report.pairs, self.val_fraction(cfg.data), cfg.train.seed)
        texts = [t for pair in train for t in pair]
        return Corpus(train, val, texts, report.skipped, report.first_error)

    def stream(self, cfg, paths: Sequence[str], skip_bad: bool, skips):
        _one_file(paths)
        return iter_pairs(paths[0], cfg.data, skip_bad, skips)

    def no_examples(self, paths: Sequence[str], skips) -> Exception:
        return no_pairs(paths[0], skips)

    def split_plan(self, cfg, count: int) -> SplitPlan:
        """``split_pairs``'s random split, as shard records in file order: ``order[split][j]`` is the
        record of the split's ``j``-th pair (its rank in the file among the split's pairs)."""
        order, n_val = split_order(count, self.val_fraction(cfg.data), cfg.train.seed)
        val = np.zeros(count, bool)
        val[order[:n_val]] = True
        dtype = np.int32 if count < 2**31 else np.int64
        ranks = {"train": order[n_val:], "val": order[:n_val]}
        for split, held_out in (("train", False), ("val", True)):  # one rank array at a time
            ranks[split] = (np.cumsum(val == held_out, dtype=dtype) - 1)[ranks[split]]
        return SplitPlan(val, ranks)

    def texts_of(self, item) -> list[str]:
        return list(item)

    def encode(self, cfg, tokenizer, corpus: Corpus, source: str) -> DataSplit:
        if cfg.data.packing:  # the encoder's recurrence reads a whole row: packed pairs would mix
            raise ConfigError("data.packing packs the documents of a language model; a seq2seq model's "
                              "pairs are batched by length: set it to false")
        tr = encode_pairs(corpus.train, tokenizer, cfg.data, training=True)
        va = encode_pairs(corpus.val, tokenizer, cfg.data)
        desc = f"{len(tr)} training / {len(va)} validation pairs from {source}"
        return DataSplit(tr, va, _fingerprint(tr), desc, tr.truncated + va.truncated)

    def prepared_fields(self, data_cfg) -> tuple:
        return self.TOKENIZER_FIELDS + ("max_src_len", "max_tgt_len", "src_eos")

    def write_shard(self, data_cfg, tokenizer, items: list, path: str) -> dict:
        """One record per pair (framed source, framed target) and their (N, 2) lengths beside."""
        enc = encode_pairs(items, tokenizer, data_cfg)
        writer = ShardWriter(path)
        for src, tgt in zip(enc.src, enc.tgt):
            writer.write([src, tgt])
        lengths = np.asarray([[len(a), len(b)] for a, b in zip(enc.src, enc.tgt)], np.int32).reshape(-1, 2)
        np.save(path + ".lengths.npy", lengths)
        return {"records": writer.records, "examples": len(enc), "tokens": int(lengths.sum()),
                "truncated": enc.truncated, "sha256": writer.close(), **writer.identity(),
                "histogram": length_histogram(lengths.sum(axis=1)),
                "lengths": os.path.basename(path) + ".lengths.npy"}

    def open_prepared(self, cfg, directory: str, manifest: dict, damage=None) -> DataSplit:
        if cfg.data.subword_alpha > 0:
            raise ConfigError(f"data.subword_alpha={cfg.data.subword_alpha} re-segments the pairs' texts at "
                              f"every batch; {directory} holds fixed ids: set it to 0 or train from the "
                              "pairs file")
        def split_data(split: str) -> PairShards:
            info = manifest["splits"][split]
            reader = ShardReader(directory, info["shards"], damage)
            return PairShards(reader, _mapped(directory, info.get("lengths"), (len(reader), 2)), cfg.data,
                              _mapped(directory, info.get("order"), None if info.get("order") is None else (len(reader),)))
        tr, va = split_data("train"), split_data("val")
        desc = f"{len(tr)} training / {len(va)} validation pairs streamed from {directory}"
        truncated = sum(manifest["splits"][split].get("truncated", 0) for split in ("train", "val"))
        return DataSplit(tr, va, fingerprint(manifest), desc, truncated, damage)

    def longest_batch(self, cfg) -> dict:
        b, d = cfg.train.batch_size, cfg.data
        tgt = np.zeros((b, d.max_tgt_len), np.int32)
        return {"src": np.zeros((b, d.max_src_len), np.int32), "src_len": np.full((b,), d.max_src_len, np.int32),
                "tgt_in": tgt, "targets": tgt}

    def example_prompt(self, item) -> str:
        return item[0]

    def extra_metrics(self, model, variables, cfg, tokenizer, val_dataset) -> dict:
        """BLEU and chrF of greedy replies to the first ``train.bleu_samples`` validation sources."""
        n = min(cfg.train.bleu_samples, len(val_dataset))
        if n == 0:
            return {}
        import sacrebleu
        from nety_jax.data.batching import eval_batches
        from nety_jax.data.prompts import decode_replies
        batch = eval_batches(val_dataset, n, limit=1)[0]
        max_new = min(cfg.decode.max_new_tokens, cfg.data.max_tgt_len)
        tokens = greedy_replies(model, variables, batch["src"], batch["src_len"], max_new)
        hyps = decode_replies(tokenizer, tokens, n)
        refs = [tokenizer.decode(batch["targets"][i].tolist()) for i in range(n)]
        return {"bleu": sacrebleu.corpus_bleu(hyps, [refs]).score,
                "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score}

    def prompts(self, model_cfg) -> SourcePrompts:
        return SourcePrompts(model_cfg)

    def chat_prompt(self, messages: Sequence[tuple[str, str]]) -> str:
        """The last user message with text (the model answers one source, not a history)."""
        return [content for role, content in messages if role == "user" and content.strip()][-1]


def greedy_replies(model, variables, src, src_len, max_new_tokens: int) -> np.ndarray:
    """(B, max_new_tokens) greedy reply ids to the sources ``src`` (B, S) of lengths ``src_len`` (B,)."""
    import jax.numpy as jnp
    from nety_jax.decoding import LoopSpec, SamplingParams, generate_jit
    spec = LoopSpec(max_new_tokens=max_new_tokens)
    params = SamplingParams.create(src.shape[0], temperature=0.0)
    out = generate_jit(variables, jnp.asarray(src), jnp.asarray(src_len), params, model=model, spec=spec)
    return np.asarray(out["tokens"])


def _one_file(paths: Sequence[str]) -> None:
    if len(paths) != 1:
        raise DataError("a seq2seq model trains on one pairs file (--data FILE)")


def _mapped(directory: str, name, shape):
    """A prepared split's ``.npy`` file of integers of ``shape`` (one row per record), memory-mapped;
    None when there is none and no shape; a damaged, missing or misshapen file is a DataError."""
    if not name:
        return None if shape is None else np.zeros((0,) + tuple(shape[1:]), np.int32)
    path = os.path.join(directory, str(name))
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:  # missing, truncated, not an .npy file (never unpickled)
        raise DataError(f"{path}: unreadable ({str(e).splitlines()[0][:120]}); prepare the data again") from None
    if array.dtype.kind not in "iu" or array.shape != tuple(shape):
        raise DataError(f"{path}: holds {array.dtype}{list(array.shape)}, expected integers of shape "
                        f"{list(shape)} (one row per record); prepare the data again")
    return array


def _fingerprint(encoded) -> str:
    h = hashlib.sha256()
    for s, t in zip(encoded.src, encoded.tgt):
        h.update(s.tobytes() + b"|" + t.tobytes() + b"\n")
    return h.hexdigest()[:16]
