"""Language modelling: plain text in, a continuation of a prefix out.

Text files are read line by line (``nety_jax.data.text``); the validation split is the last
lines, so no window crosses from training into validation text. The lines become
one token stream cut into windows of ``data.seq_len + 1`` tokens every
``data.stride``; a batch is ``{"tokens", "targets"}``. With ``data.packing`` each
line is a document instead, several to a row and kept apart (``nety_jax.data.packing``;
batches add ``segments`` and ``positions``). A prompt is a prefix (its end kept
when too long); a chat's whole conversation is the text continued.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Sequence

import numpy as np

from nety_jax.config.sections import EOS_ID
from nety_jax.data.packing import document_pieces, pack, pack_text
from nety_jax.data.shards import ShardReader, ShardWriter, fingerprint, length_histogram
from nety_jax.data.streamed import PackedShards, StreamWindows
from nety_jax.data.text import (default_text_path, encode_text, iter_text, no_text, read_text, split_text,
                                val_count, window_sizes)
from nety_jax.errors import ConfigError
from nety_jax.tasks.base import Corpus, DataSplit, SplitPlan, Task
from nety_jax.tasks.prompting import PrefixPrompts


STREAM_CHUNK = 1024  # tokens per record of a prepared token stream


class LanguageModelTask(Task, name="lm", noun="a language model", data_option="--text", data_help="text files",
                        default_val_fraction=0.1, continues_text=True, default_path=default_text_path):
    def read(self, cfg, paths: Sequence[str], skip_bad: bool) -> Corpus:
        report = read_text(paths, skip_bad=skip_bad)
        train, val = split_text(report.lines, self.val_fraction(cfg.data))
        return Corpus(train, val, train, report.skipped, report.first_error)

    def stream(self, cfg, paths: Sequence[str], skip_bad: bool, skips):
        return iter_text(paths, skip_bad, skips)

    def no_examples(self, paths: Sequence[str], skips) -> Exception:
        return no_text(paths)

    def split_plan(self, cfg, count: int) -> SplitPlan:
        """The last lines are held out; both splits keep the file order."""
        return SplitPlan(np.arange(count) >= count - val_count(count, self.val_fraction(cfg.data)), {})

    def texts_of(self, item) -> list[str]:
        return [item]

    def encode(self, cfg, tokenizer, corpus: Corpus, source: str) -> DataSplit:
        if cfg.data.subword_alpha > 0:
            raise ConfigError(f"data.subword_alpha={cfg.data.subword_alpha} re-segments (input, target) "
                              f"pairs; the {self.name} task trains on a token stream: set it to 0")
        seq_len, stride = window_sizes(cfg.data, cfg.model.max_len)
        if cfg.data.packing:
            return self._packed(cfg, tokenizer, corpus, source, seq_len)
        tr = encode_text(corpus.train, tokenizer, seq_len, stride)
        va = encode_text(corpus.val, tokenizer, seq_len, seq_len)
        desc = (f"{len(tr)} training / {len(va)} validation windows of {seq_len} tokens "
                f"({len(tr.stream):,} / {len(va.stream):,} tokens) from {source}")
        return DataSplit(tr, va, _fingerprint(tr), desc)

    def longest_batch(self, cfg) -> dict:
        shape = (cfg.train.batch_size, window_sizes(cfg.data, cfg.model.max_len)[0])
        names = ("tokens", "targets") + (("segments", "positions") if cfg.data.packing else ())
        return {name: np.zeros(shape, np.int32) for name in names}

    def _packed(self, cfg, tokenizer, corpus: Corpus, source: str, seq_len: int) -> DataSplit:
        tr, va = (pack_text(lines, tokenizer, seq_len) for lines in (corpus.train, corpus.val))
        filled = lambda rows: int(np.sum(rows.segments > 0)) / max(rows.segments.size, 1)
        desc = (f"{len(tr)} training / {len(va)} validation packed rows of {seq_len} tokens "
                f"({tr.documents:,} / {va.documents:,} documents, {100 * filled(tr):.0f}% / "
                f"{100 * filled(va):.0f}% filled) from {source}")
        return DataSplit(tr, va, _packed_fingerprint(tr), desc)

    def resolved_data(self, cfg):
        return dataclasses.replace(cfg.data, seq_len=window_sizes(cfg.data, cfg.model.max_len)[0])

    def prepared_fields(self, data_cfg) -> tuple:
        """Windows are cut at training (any ``seq_len`` / ``stride``); packed rows are made here."""
        return self.TOKENIZER_FIELDS + (("packing", "seq_len") if data_cfg.packing else ("packing",))

    def write_shard(self, data_cfg, tokenizer, items: list, path: str) -> dict:
        """Lines -> their token stream in records of ``STREAM_CHUNK`` tokens (the shards of a split,
        in order, are the one stream ``encode_text`` makes), or with ``data.packing`` their packed
        rows (each shard packed on its own: a shard's last rows close at its end)."""
        ids = [tokenizer.encode(line) for line in items]
        histogram = length_histogram(np.asarray([len(i) + 1 for i in ids]))
        writer = ShardWriter(path)
        if data_cfg.packing:
            rows = pack([p for d in ids for p in document_pieces(d, data_cfg.seq_len)], data_cfg.seq_len)
            for r in range(len(rows)):
                writer.write([rows.tokens[r], rows.targets[r], rows.segments[r], rows.positions[r]])
            tokens, examples, documents = int(np.sum(rows.segments > 0)), len(rows), rows.documents
        else:
            stream = np.asarray([t for d in ids for t in d + [EOS_ID]], np.int32)
            for start in range(0, len(stream), STREAM_CHUNK):
                writer.write([stream[start: start + STREAM_CHUNK]])
            tokens, examples, documents = len(stream), len(ids), len(ids)
        return {"records": writer.records, "examples": examples, "tokens": tokens,
                "documents": documents, "sha256": writer.close(), **writer.identity(), "histogram": histogram}

    def open_prepared(self, cfg, directory: str, manifest: dict, damage=None) -> DataSplit:
        if cfg.data.subword_alpha > 0:
            raise ConfigError(f"data.subword_alpha={cfg.data.subword_alpha} re-segments (input, target) "
                              f"pairs; the {self.name} task trains on a token stream: set it to 0")
        seq_len, stride = window_sizes(cfg.data, cfg.model.max_len)
        splits = manifest["splits"]
        readers = [ShardReader(directory, splits[s]["shards"], damage) for s in ("train", "val")]
        if cfg.data.packing:
            tr, va = (PackedShards(r, seq_len) for r in readers)
            what = "packed rows"
        else:
            tokens = [[shard["tokens"] for shard in splits[s]["shards"]] for s in ("train", "val")]
            tr = StreamWindows(readers[0], tokens[0], STREAM_CHUNK, seq_len, stride)
            va = StreamWindows(readers[1], tokens[1], STREAM_CHUNK, seq_len, seq_len)
            what = "windows"
        desc = (f"{len(tr)} training / {len(va)} validation {what} of {seq_len} tokens "
                f"({splits['train']['tokens']:,} / {splits['val']['tokens']:,} tokens) streamed from {directory}")
        # windows are cut at training: another seq_len or stride is other training examples, as on raw text
        fp = fingerprint(manifest) if cfg.data.packing else \
            hashlib.sha256(f"{fingerprint(manifest)}:{seq_len}:{stride}".encode()).hexdigest()[:16]
        return DataSplit(tr, va, fp, desc, damage=damage)

    def example_prompt(self, item) -> str:
        return item

    def prompts(self, model_cfg) -> PrefixPrompts:
        return PrefixPrompts(model_cfg)

    def chat_prompt(self, messages: Sequence[tuple[str, str]]) -> str:
        """The conversation's text, one message a line (the model continues it)."""
        return "\n".join(content for _, content in messages if content.strip())


def _packed_fingerprint(rows) -> str:
    h = hashlib.sha256()
    for a in (rows.tokens, rows.targets, rows.segments):
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _fingerprint(windows) -> str:
    h = hashlib.sha256()
    h.update(windows.stream.tobytes())
    h.update(windows.starts.tobytes())
    return h.hexdigest()[:16]
