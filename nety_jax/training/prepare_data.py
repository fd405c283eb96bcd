"""``nety-jax prepare``: read, validate, tokenize once and write shards; and opening them to train.

Reading and validation are the task's (``Task.read``: the same ``file:line`` errors and
``--skip-bad`` as ``train``); the tokenizer is trained on the training split (or taken from
a run or a file); then every shard is encoded and written by a worker process
(``Task.write_shard``), in parallel over the cores. The directory is written through
``runs.guard`` (writer ``prepare``): a new or empty directory, or an earlier prepare
output with ``--overwrite``; nothing is left behind on failure.

Training on a prepared directory (``open_prepared``) checks that the config's encoding
fields, and a resumed run's tokenizer, are the ones the shards were made with.
"""
from __future__ import annotations

import multiprocessing
import os
import tempfile
from typing import Callable, Optional, Sequence

from nety_jax.config import Config
from nety_jax.data import shards
from nety_jax.data.tokenizer import SentencePieceTokenizer, load_tokenizer
from nety_jax.errors import CheckpointError, ConfigError, DataError
from nety_jax.models import get_model
from nety_jax.runs import guard
from nety_jax.runs.kinds import identify_dir
from nety_jax.tasks import DataSplit
from nety_jax.tasks.workers import init_worker, write_job

PER_SHARD = 50_000  # examples (pairs, lines) per shard


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


def _run_jobs(jobs: list, task, data_cfg, tok_dir: str, workers: int, bar) -> list:
    """Every job's shard stats, in job order; in ``workers`` processes when there are several jobs."""
    args = (task.name, data_cfg, tok_dir)
    if workers <= 1 or len(jobs) <= 1:
        init_worker(*args)
        results = []
        for numbered in enumerate(jobs):
            results.append(write_job(numbered)[1])
            bar.update(results[-1]["items"])
        return results
    # spawned, not forked: the parent may hold threads (JAX, tokenizer training) a fork would copy broken
    ctx = multiprocessing.get_context("spawn")
    results = [None] * len(jobs)
    with ctx.Pool(min(workers, len(jobs)), initializer=init_worker, initargs=args) as pool:
        for i, stats in pool.imap_unordered(write_job, enumerate(jobs)):
            results[i] = stats
            bar.update(stats["items"])
    return results


def _split_summary(directory: str, split: str, stats: list[dict]) -> dict:
    parts = [s.pop("lengths") for s in stats if "lengths" in s]
    summary = {"shards": stats, "examples": sum(s["examples"] for s in stats),
               "tokens": sum(s["tokens"] for s in stats), "truncated": sum(s.get("truncated", 0) for s in stats),
               "histogram": shards.merge_histograms([s.pop("histogram") for s in stats])}
    summary["lengths"] = shards.concat_lengths(directory, split, parts, 2)
    return summary


def prepare_data(cfg: Config, paths: Sequence[str], out: str, tokenizer_from: Optional[str] = None,
                 skip_bad: bool = False, workers: int = 0, per_shard: int = PER_SHARD, overwrite: bool = False,
                 log: Callable[[str], None] = print, progress: bool = True) -> dict:
    """Writes ``out`` (see the module docstring); returns its manifest."""
    if per_shard < 1:
        raise ConfigError(f"--shard-size={per_shard} must be >= 1")
    task = get_model(cfg.model).task
    claim = guard.claim(out, "prepare", overwrite)  # before any work
    paths = list(paths) if paths else task.default_paths()
    corpus = task.read(cfg, paths, skip_bad)
    if corpus.skipped:
        log(f"skipped {corpus.skipped} bad lines in {', '.join(paths)} (first: {corpus.first_error})")
    if tokenizer_from:
        tokenizer = take_tokenizer(tokenizer_from, cfg.data.lowercase)
    else:
        from nety_jax.training.setup import build_tokenizer
        tokenizer = build_tokenizer(cfg, corpus.texts)
    data_cfg = task.resolved_data(cfg)
    jobs = task.shard_jobs(cfg, corpus, per_shard)
    workers = workers or os.cpu_count() or 1
    from tqdm import tqdm
    with claim.staging() as tmp, tqdm(total=len(corpus.train) + len(corpus.val), unit="ex", disable=not progress,
                                      dynamic_ncols=True, mininterval=0.5) as bar:
        tokenizer.save(tmp)
        staged = [(split, k, items, os.path.join(tmp, shards.shard_name(split, k))) for split, k, items in jobs]
        results = _run_jobs(staged, task, data_cfg, tmp, workers, bar)
        manifest = _manifest(cfg, task, data_cfg, paths, corpus, tmp, jobs, results)
        shards.write_manifest(tmp, manifest)
    log(f"prepared {out}: " + ", ".join(f"{s} {v['examples']:,} examples ({v['tokens']:,} tokens, "
                                        f"{len(v['shards'])} shards)" for s, v in manifest["splits"].items()))
    return manifest


def _manifest(cfg, task, data_cfg, paths, corpus, directory, jobs, results) -> dict:
    by_split: dict = {"train": [], "val": []}
    for (split, _, _), stats in zip(jobs, results):
        stats.pop("items", None)
        by_split[split].append(stats)
    fields = {k: getattr(data_cfg, k) for k in task.prepared_fields(data_cfg)}
    return {"task": task.name, "data": fields, "tokenizer": shards.tokenizer_digest(directory),
            "sources": [shards.source_fingerprint(p) for p in paths], "skipped": corpus.skipped,
            "split": {"val_fraction": task.val_fraction(cfg.data), "seed": cfg.train.seed},
            "splits": {s: _split_summary(directory, s, stats) for s, stats in by_split.items()}}


def _check_config(cfg: Config, task, directory: str, manifest: dict) -> None:
    if manifest.get("task") != task.name:
        raise ConfigError(f"{directory}: prepared for {manifest.get('task')!r} data; model.arch="
                          f"{cfg.model.arch} trains on {task.data_help}: prepare the data with this config")
    data_cfg, recorded = task.resolved_data(cfg), manifest.get("data", {})
    for field in task.prepared_fields(data_cfg):
        if recorded.get(field) != getattr(data_cfg, field):
            raise ConfigError(f"{directory}: prepared with data.{field}={recorded.get(field)!r}, the config "
                              f"has {getattr(data_cfg, field)!r}: set it, or prepare the data again")


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
    data: DataSplit = task.open_prepared(cfg, directory, manifest, shards.Damage() if skip_bad else None)
    return load_tokenizer(directory), data
