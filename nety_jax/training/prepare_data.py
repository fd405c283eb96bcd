"""``nety-jax prepare``: read, validate, tokenize once and write shards; and opening them to train.

The corpus is never held in memory: it is read as a stream, line by line (``Task.stream``),
in passes. Pass 1 validates every line (the ``file:line`` errors and ``--skip-bad`` of
``train``) and counts the examples; the task's ``split_plan`` then says which are held out
(the split ``train`` makes from the same files) and in which order each split's dataset reads
its records; a tokenizer is trained on the training split (at most ``TOKENIZER_SAMPLE``
examples of it: a bounded, evenly spaced sample beyond) or taken from a run or a file; pass 2
cuts the stream into shards of ``--shard-size`` examples, each encoded and written by a worker
process (``Task.write_shard``) as soon as it fills, at most two per worker read ahead. The directory is written through
``runs.guard`` (writer ``prepare``): a new or empty directory, or an earlier prepare
output with ``--overwrite``; nothing is left behind on failure.

Training on a prepared directory (``open_prepared``) checks that the config's encoding
fields, and a resumed run's tokenizer, are the ones the shards were made with.
"""
from __future__ import annotations

import collections
import hashlib
import itertools
import multiprocessing
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Optional, Sequence

import numpy as np

from nety_jax.config import Config
from nety_jax.data import shards
from nety_jax.data.coverage import SAMPLE, check_coverage
from nety_jax.data.readers import Skips
from nety_jax.data.tokenizer import SentencePieceTokenizer, load_tokenizer
from nety_jax.errors import CheckpointError, ConfigError, DataError
from nety_jax.models import get_model
from nety_jax.runs import guard
from nety_jax.runs.kinds import identify_dir
from nety_jax.tasks import DataSplit
from nety_jax.tasks.base import SplitPlan
from nety_jax.tasks.workers import init_worker, write_job

PER_SHARD = 50_000  # examples (pairs, lines) per shard
TOKENIZER_SAMPLE = 1_000_000  # training examples a tokenizer is trained on at most (a bounded sample)


def prepared_dir(paths: Optional[Sequence[str]]) -> Optional[str]:
    """The directory when ``paths`` is one directory ``nety-jax prepare`` wrote; None for files;
    any other directory is an error."""
    if not paths or len(paths) != 1 or not os.path.isdir(paths[0]):
        return None
    found = identify_dir(paths[0])
    if found is None or found.writer != "prepare":
        raise DataError(f"{paths[0]}: is a directory, not a data file (nor a directory `nety-jax prepare` "
                        "wrote)")
    return paths[0]


def take_tokenizer(source: str, lowercase: bool = False):
    """A tokenizer from a run (or prepared) directory, or a SentencePiece model file (which does not
    record whether texts are lowercased first: ``lowercase``, the config's ``data.lowercase``)."""
    if os.path.isdir(source):
        return load_tokenizer(source)
    if not os.path.isfile(source):
        raise DataError(f"--tokenizer {source}: not found (a run directory or a SentencePiece .model file)")
    with open(source, "rb") as f:
        tokenizer = SentencePieceTokenizer(f.read(), where=source)
    tokenizer.lowercase = lowercase
    return tokenizer


def _check_kind(source: str, tokenizer, data_cfg) -> None:
    """``prepared.json`` records the config's tokenizer fields, which training checks and a run
    keeps: a tokenizer of another kind (or lowercasing otherwise) than the config says would be
    recorded, and trained with, as what it is not."""
    kind = {"SentencePieceTokenizer": "sentencepiece", "WordTokenizer": "word", "HFTokenizer": "hf"}.get(
        type(tokenizer).__name__, data_cfg.tokenizer)
    if kind != data_cfg.tokenizer:
        raise ConfigError(f"--tokenizer {source}: is a {kind} tokenizer, the config has data.tokenizer="
                          f"{data_cfg.tokenizer!r}: set --set data.tokenizer={kind}")
    if kind == "sentencepiece" and bool(getattr(tokenizer, "lowercase", False)) != bool(data_cfg.lowercase):
        raise ConfigError(f"--tokenizer {source}: lowercases={bool(tokenizer.lowercase)}, the config has "
                          f"data.lowercase={data_cfg.lowercase}: set it the same")


def _scan(task, cfg, paths, skip_bad: bool, progress: bool) -> tuple[int, Skips]:
    """Pass 1: reads and validates every line (the ``file:line`` errors), counting the examples."""
    from tqdm import tqdm
    skips, count = Skips(), 0
    with tqdm(desc="reading", unit="ex", disable=not progress, dynamic_ncols=True, mininterval=0.5) as bar:
        for _ in task.stream(cfg, paths, skip_bad, skips):
            count += 1
            if not count % 10_000:
                bar.update(10_000)
    if not count:
        raise task.no_examples(paths, skips)
    return count, skips


def _tokenizer_texts(task, cfg, paths, plan: SplitPlan) -> list[str]:
    """The training split's texts in its dataset order (those ``read`` gives) when it has at most
    ``TOKENIZER_SAMPLE`` examples; else every k-th training example in file order (a bounded sample)."""
    n_train = int(np.sum(~plan.val))
    every = max(1, -(-n_train // TOKENIZER_SAMPLE))
    picked = ((rank, item) for rank, item in enumerate(_split_items(task, cfg, paths, plan, "train"))
              if not rank % every)
    if every > 1:
        return [t for _, item in picked for t in task.texts_of(item)]
    items = dict(picked)
    order = plan.order.get("train")
    ranks = range(n_train) if order is None else order
    return [t for r in ranks for t in task.texts_of(items[int(r)])]


def _split_items(task, cfg, paths, plan: SplitPlan, split: str):
    """The examples of one split in file order (pass 1 raised or counted every bad line)."""
    held_out = split == "val"
    items = enumerate(task.stream(cfg, paths, True, Skips()))
    return (item for i, item in items if i < len(plan.val) and plan.val[i] == held_out)


def _jobs(task, cfg, paths, plan: SplitPlan, per_shard: int, tmp: str):
    """Pass 2: ``(split, k, examples, path)`` of every shard, as the stream fills them."""
    buffers, shard_no, count = {"train": [], "val": []}, {"train": 0, "val": 0}, 0
    for i, item in enumerate(task.stream(cfg, paths, True, Skips())):
        count += 1
        if count > len(plan.val):
            break
        split = "val" if plan.val[i] else "train"
        buffers[split].append(item)
        if len(buffers[split]) == per_shard:
            yield split, shard_no[split], buffers[split], os.path.join(tmp, shards.shard_name(split, shard_no[split]))
            buffers[split], shard_no[split] = [], shard_no[split] + 1
    if count != len(plan.val):
        raise DataError(f"{', '.join(paths)}: changed while being prepared ({len(plan.val)} examples, then "
                        f"{count}); prepare again")
    for split, items in buffers.items():
        if items:
            yield split, shard_no[split], items, os.path.join(tmp, shards.shard_name(split, shard_no[split]))


def _run_jobs(jobs, n_jobs: int, task, data_cfg, tok_dir: str, workers: int, bar) -> dict:
    """Every shard's stats by ``(split, k)``; in ``workers`` processes when there are several shards,
    at most ``2 * workers`` of them read ahead (the corpus is never all in memory)."""
    args, results = (task.name, data_cfg, tok_dir), {}

    def done(stats):
        results[(stats.pop("split"), stats.pop("k"))] = stats
        bar.update(stats["items"])

    if workers <= 1 or n_jobs <= 1:
        init_worker(*args)
        for job in jobs:
            done(write_job(job))
        return results
    # spawned, not forked: the parent may hold threads (JAX, tokenizer training) a fork would copy broken.
    # An executor, not a Pool: a worker that dies (killed, out of memory) breaks it and every waiting
    # shard fails, where a Pool replaced the worker and waited for its lost shard forever
    ctx, pending = multiprocessing.get_context("spawn"), collections.deque()
    try:
        with ProcessPoolExecutor(min(workers, n_jobs), mp_context=ctx, initializer=init_worker,
                                 initargs=args) as pool:
            try:
                for job in jobs:
                    pending.append(pool.submit(write_job, job))
                    while len(pending) >= 2 * workers:
                        done(pending.popleft().result())
                while pending:
                    done(pending.popleft().result())
            except BaseException:
                _stop_workers(pool)
                raise
    except BrokenProcessPool:
        raise DataError("a prepare worker process died (killed, or out of memory?) before its shard was "
                        "written; nothing was written: prepare again (fewer --workers or a smaller "
                        "--shard-size use less memory)") from None
    return results


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Stops the workers now (Ctrl-C, a bad line, a full disk): leaving the executor waited for
    every shard already handed out, which kept Ctrl-C from stopping `prepare` for tens of seconds.
    Python < 3.14 has no public way to end an executor's processes."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # shutdown() forgets them
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()


def _split_summary(directory: str, split: str, stats: list[dict], order) -> dict:
    parts = [s.pop("lengths") for s in stats if "lengths" in s]
    summary = {"shards": stats, "examples": sum(s["examples"] for s in stats),
               "tokens": sum(s["tokens"] for s in stats), "truncated": sum(s.get("truncated", 0) for s in stats),
               "histogram": shards.merge_histograms([s.pop("histogram") for s in stats])}
    summary["lengths"] = shards.concat_lengths(directory, split, parts, 2)
    if order is not None:  # the split's dataset order over its records (file order)
        summary["order"] = f"{split}.order.npy"
        np.save(os.path.join(directory, summary["order"]), order)
        summary["order_sha256"] = hashlib.sha256(np.ascontiguousarray(order).tobytes()).hexdigest()
    return summary


def prepare_data(cfg: Config, paths: Sequence[str], out: str, tokenizer_from: Optional[str] = None,
                 skip_bad: bool = False, workers: int = 0, per_shard: int = PER_SHARD, overwrite: bool = False,
                 log: Callable[[str], None] = print, progress: bool = True) -> dict:
    """Writes ``out`` (see the module docstring); returns its manifest."""
    if per_shard < 1:
        raise ConfigError(f"--shard-size={per_shard} must be >= 1")
    if workers < 0:  # it ran in one process, as if 1 had been given
        raise ConfigError(f"--workers={workers} must be >= 0 (0: one per core)")
    task = get_model(cfg.model).task
    claim = guard.claim(out, "prepare", overwrite)  # before any work
    paths = list(paths) if paths else task.default_paths()
    count, skips = _scan(task, cfg, paths, skip_bad, progress)
    if skips.skipped:
        log(f"skipped {skips.skipped} bad lines in {', '.join(paths)} (first: {skips.first_error})")
    plan = task.split_plan(cfg, count)
    if tokenizer_from:
        tokenizer = take_tokenizer(tokenizer_from, cfg.data.lowercase)
        _check_kind(tokenizer_from, tokenizer, cfg.data)
        first = itertools.islice(_split_items(task, cfg, paths, plan, "train"), SAMPLE)  # a cheap sample
        check_coverage(tokenizer, [t for item in first for t in task.texts_of(item)], ", ".join(paths), log,
                       f"the tokenizer of {tokenizer_from}", "prepare it without --tokenizer (one is trained on it)")
    else:
        from nety_jax.training.setup import build_tokenizer
        tokenizer = build_tokenizer(cfg, _tokenizer_texts(task, cfg, paths, plan))
    data_cfg, workers = task.resolved_data(cfg), workers or os.cpu_count() or 1
    n_val = int(plan.val.sum())
    n_jobs = -(-(count - n_val) // per_shard) + -(-n_val // per_shard)
    from tqdm import tqdm
    with claim.staging() as tmp, tqdm(total=count, unit="ex", disable=not progress, dynamic_ncols=True,
                                      mininterval=0.5) as bar:
        tokenizer.save(tmp)
        results = _run_jobs(_jobs(task, cfg, paths, plan, per_shard, tmp), n_jobs, task, data_cfg, tmp, workers, bar)
        manifest = _manifest(cfg, task, data_cfg, paths, skips, tmp, plan, results)
        shards.write_manifest(tmp, manifest)
    log(f"prepared {out}: " + ", ".join(f"{s} {v['examples']:,} examples ({v['tokens']:,} tokens, "
                                        f"{len(v['shards'])} shards)" for s, v in manifest["splits"].items()))
    return manifest


def _manifest(cfg, task, data_cfg, paths, skips: Skips, directory, plan: SplitPlan, results: dict) -> dict:
    by_split: dict = {"train": [], "val": []}
    for (split, _), stats in sorted(results.items()):
        stats.pop("items", None)
        by_split[split].append(stats)
    fields = {k: getattr(data_cfg, k) for k in task.prepared_fields(data_cfg)}
    return {"task": task.name, "data": fields, "tokenizer": shards.tokenizer_digest(directory),
            "sources": [shards.source_fingerprint(p) for p in paths], "skipped": skips.skipped,
            "split": {"val_fraction": task.val_fraction(cfg.data), "seed": cfg.train.seed},
            "splits": {s: _split_summary(directory, s, stats, plan.order.get(s)) for s, stats in by_split.items()}}


def _check_config(cfg: Config, task, directory: str, manifest: dict) -> None:
    if manifest.get("task") != task.name:
        raise ConfigError(f"{directory}: prepared for {manifest.get('task')!r} data; model.arch="
                          f"{cfg.model.arch} trains on {task.data_help}: prepare the data with this config")
    data_cfg, recorded = task.resolved_data(cfg), manifest.get("data", {})
    for field in task.prepared_fields(data_cfg):
        if recorded.get(field) != getattr(data_cfg, field):
            raise ConfigError(f"{directory}: prepared with data.{field}={recorded.get(field)!r}, the config "
                              f"has {getattr(data_cfg, field)!r}: set it, or prepare the data again")
    split = manifest.get("split") or {}  # the held-out split is made at prepare: another one is not honoured
    if "val_fraction" in split and split["val_fraction"] != task.val_fraction(cfg.data):
        raise ConfigError(f"{directory}: prepared with data.val_fraction={split['val_fraction']!r} (its validation "
                          f"split), the config has {task.val_fraction(cfg.data)!r}: set it, or prepare the data again")


def _same_tokenizer(directory: str, tokenizer, other: str, manifest: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(tmp)
        digest = shards.tokenizer_digest(tmp)
    if digest != manifest.get("tokenizer"):
        raise CheckpointError(f"{directory}: prepared with another tokenizer than {other}; prepare the data "
                              f"with `--tokenizer {other}` or use another --workdir")


def open_prepared(cfg: Config, directory: str, run_tokenizer=None, run_where: str = "",
                  skip_bad: bool = False) -> tuple:
    """(tokenizer, DataSplit) streamed from ``directory``. ``run_tokenizer``: the tokenizer the
    run must keep (a resumed run's, or the weights' it starts from), named ``run_where``.
    ``skip_bad``: damaged records are skipped and counted (``DataSplit.damage``), not an error."""
    task = get_model(cfg.model).task
    manifest = shards.read_manifest(directory)
    _check_config(cfg, task, directory, manifest)
    if run_tokenizer is not None:
        _same_tokenizer(directory, run_tokenizer, run_where, manifest)
    tokenizer = _own_tokenizer(directory, manifest)
    data: DataSplit = task.open_prepared(cfg, directory, manifest, shards.Damage() if skip_bad else None)
    return tokenizer, data


def _own_tokenizer(directory: str, manifest: dict):
    """The directory's tokenizer, refused unless it is the one its shards were encoded with (the
    digest ``prepared.json`` recorded): another tokenizer put in its place would read the shards'
    ids as other pieces, ids past its vocabulary included, and train on them without a word."""
    tokenizer = load_tokenizer(directory)  # a missing or malformed file: one line naming it
    if shards.tokenizer_digest(directory) != manifest.get("tokenizer"):
        info = os.path.join(directory, "tokenizer.json")
        raise DataError(f"{directory}: its tokenizer ({info} and the file it names) is not the one its "
                        f"shards were encoded with (changed after `nety-jax prepare` wrote it: the digest "
                        f"in {shards.MANIFEST} differs); prepare the data again")
    return tokenizer
