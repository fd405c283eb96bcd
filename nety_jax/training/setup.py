"""Setting a run up: data, tokenizer, config reconciliation, compiled steps, state.

Resuming is safe by construction. The requested config is compared with the run's
saved one: changes that alter the parameters, the tokenizer, the seed (the
validation split) or the optimizer state are refused with the fields named;
other changes are honoured. The training data is fingerprinted (its encoded
examples): when it changed, or the batch size did, the data position restarts
at epoch 0 and the log says so.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from nety_jax.config import Config, save_config
from nety_jax.data import BatchIterator
from nety_jax.data.batching import PLAN
from nety_jax.data.coverage import check_coverage
from nety_jax.data.tokenizer import SentencePieceTokenizer, WordTokenizer
from nety_jax.errors import CheckpointError, ConfigError
from nety_jax.models import get_model
from nety_jax.runs import checkpoints as ckpt
from nety_jax.runs import guard
from nety_jax.runs.compat import RUNTIME_MODEL_FIELDS, check_fits, describe_differences, model_differences
from nety_jax.runs.files import CONFIG_FILE, DAMAGED, checkpoint_dir, load_run_tokenizer, read_run_config
from nety_jax.runs.weights import split_variables
from nety_jax.tasks import DataSplit
from nety_jax.data.prefetch import Prefetcher
from nety_jax.training.evaluation import validation_batches
from nety_jax.training.memory import check_state
from nety_jax.training.parallel import Runner, check_layout, is_primary, local
from nety_jax.training.prepare_data import open_prepared, prepared_dir

TOKENIZER_FIELDS = ("tokenizer", "vocab_size", "spm_model_type", "lowercase", "word_split")
SOURCE_FILE = "init_from.json"  # the weights a run fine-tuned from started from (train --init-from)


def check_workdir(workdir: str) -> None:
    """Training writes only into a new or empty directory or a run it continues (runs/guard.py):
    never over an export, a quantized run or a directory of someone else's files."""
    guard.claim(workdir, "train", flag="--workdir")


@dataclasses.dataclass
class Run:
    cfg: Config
    model: object
    tokenizer: object
    data: DataSplit
    runner: Runner
    state: object
    manager: object
    start: int
    iterator: BatchIterator
    val_batches: list


def build_tokenizer(cfg: Config, texts: list[str]):
    d = cfg.data
    if d.tokenizer == "word":
        return WordTokenizer.build(texts, d.vocab_size, d.word_split)
    if d.tokenizer == "hf":
        from nety_jax.data.hf_tokenizer import HFTokenizer
        return HFTokenizer.train(texts, d.vocab_size, d.lowercase)
    return SentencePieceTokenizer.train(texts, d.vocab_size, d.spm_model_type, d.lowercase)


def reconcile(saved: Config, requested: Config, trained: bool = True) -> list[str]:
    """Refuses changes a resumed run cannot honour; returns notes on the ones it honours.
    ``trained``: the run has taken steps (an import at step 0 has no validation history yet)."""
    s, r = saved.to_dict(), requested.to_dict()
    refused = model_differences(s, r)
    refused += [f"data.{k}: saved {s['data'][k]!r}, requested {r['data'][k]!r} (the tokenizer is fixed)"
                for k in TOKENIZER_FIELDS if s["data"][k] != r["data"][k]]
    if saved.train.seed != requested.train.seed:
        refused.append(f"train.seed: saved {saved.train.seed}, requested {requested.train.seed} "
                       "(the validation split depends on it)")
    held_out = get_model(requested.model).task.val_fraction  # None: the task's default
    if trained and held_out(saved.data) != held_out(requested.data):  # trained-on examples would be validated
        refused.append(f"data.val_fraction: saved {held_out(saved.data)}, requested {held_out(requested.data)} "
                       "(the validation split depends on it)")
    if saved.train.optimizer != requested.train.optimizer or \
            (saved.train.clip_norm > 0) != (requested.train.clip_norm > 0):
        refused.append("train.optimizer / train.clip_norm: the optimizer state would not fit")
    if refused:
        raise CheckpointError(f"the run directory holds a run with another config: "
                              f"{describe_differences(refused)}; use another --workdir")
    changed_model = [k for k in sorted(RUNTIME_MODEL_FIELDS) if k in s["model"] and s["model"][k] != r["model"].get(k)]
    return [f"model.{k}: {s['model'][k]!r} -> {r['model'][k]!r}" for k in changed_model] + \
        [f"{sec}.{k}: {s[sec][k]!r} -> {r[sec][k]!r}" for sec in ("data", "train", "decode")
         for k in r[sec] if s[sec][k] != r[sec][k]]


def _restore_weights(workdir: str, cfg: Config, step: int, abstract) -> dict:
    """Through a manager of its own: Orbax ties an item to the handler that first read it, and
    the training manager saves ``state`` as a TrainState."""
    reader = ckpt.make_manager(workdir, cfg, read_only=True)
    try:
        return ckpt.restore_variables(reader, step, split_variables(abstract.variables))
    finally:
        reader.close()


def _from_weights(state, restored: dict, step: int):
    params = restored["params"]
    return state.replace(step=jnp.asarray(step, jnp.int32), params=params, mutables=restored["mutables"],
                         opt_state=state.tx.init(params))


def _restore(cfg: Config, model, workdir: str, state, manager, log):
    """The newest intact checkpoint into ``state``'s structure: (state, meta, step) or None."""
    abstract = ckpt.abstract_of(state)

    def restore_one(step):
        meta = ckpt.restore_meta(manager, step)
        check_fits(meta, cfg, f"{checkpoint_dir(workdir)}/{step}")
        if meta.get("weights_only"):  # an imported run: its weights, a fresh optimizer
            return _from_weights(state, _restore_weights(workdir, cfg, step, abstract), step), meta
        return ckpt.restore_state(manager, step, abstract)

    result, step = ckpt.restore_newest(workdir, restore_one, log, move_damaged=is_primary())
    manager.reload()  # damaged steps may have moved out
    return None if result is None else (*result, step)


def prepare(cfg: Config, workdir: str, paths: Optional[Sequence[str]], skip_bad: bool,
            log: Callable[[str], None], init_from=None) -> Run:
    if cfg.model.quant != "none":
        raise ConfigError(f"model.quant={cfg.model.quant} is for inference: train the float32 run and "
                          "quantize it again")
    check_layout(cfg)  # a bad --parallel / train.mesh_* setting before the data is read and tokenized
    check_workdir(workdir)
    os.makedirs(workdir, exist_ok=True)
    task = get_model(cfg.model).task
    paths = list(paths) if paths else task.default_paths()
    saved_cfg, has_checkpoint = _existing_run(workdir)
    if has_checkpoint and init_from is not None:
        check_same_source(workdir, init_from.where, log)
    init_from = None if has_checkpoint else init_from  # a resumed run has its own weights
    prepared = prepared_dir(paths)
    if prepared is not None:  # streamed from shards: the tokenizer is the one they were made with
        run_tok = load_run_tokenizer(workdir, saved_cfg) if has_checkpoint else getattr(init_from, "tokenizer", None)
        tokenizer, data = open_prepared(cfg, prepared, run_tok, workdir if has_checkpoint else
                                        getattr(init_from, "where", ""), skip_bad)
    else:
        tokenizer, data = _read_raw(cfg, task, workdir, paths, skip_bad, has_checkpoint, init_from, log)
    if not has_checkpoint and tokenizer.vocab_size < cfg.data.vocab_size:
        log(f"tokenizer: {tokenizer.vocab_size} ids (data.vocab_size={cfg.data.vocab_size} is more than "
            "this text supports)")
    cfg = cfg.replace_model(vocab_size=tokenizer.vocab_size)
    notes = reconcile(saved_cfg, cfg, ckpt.latest_step(workdir) != 0) if has_checkpoint else []
    model = get_model(cfg.model)
    data = data if prepared is not None else task.encode(cfg, tokenizer, data, ", ".join(paths))
    if data.truncated:
        log(f"cut {data.truncated} pairs longer than data.max_src_len={cfg.data.max_src_len} / "
            f"data.max_tgt_len={cfg.data.max_tgt_len}")
    task.batches(data.train, cfg)  # enough data? (raises)
    runner = Runner(cfg, model)
    check_state(runner, model, cfg)  # before anything is compiled
    state = runner.create_state(model, cfg.train, jax.random.PRNGKey(cfg.train.seed),
                                None if init_from is None else init_from.variables)
    manager = ckpt.make_manager(workdir, cfg)
    restored = _restore(cfg, model, workdir, state, manager, log) if has_checkpoint else None

    start, position = 0, {"epoch": 0, "index": 0}
    if restored is not None:
        state, meta, step = restored
        start = int(local(state.step))
        log(f"resumed from {workdir} at step {start}" + (f"; honoured: {', '.join(notes)}" if notes else ""))
        position = _data_position(meta.get("data", {}), data, cfg, log)
    if is_primary() and start < cfg.train.steps:  # a run that has nothing to do changes nothing
        _write_run_files(workdir, cfg, tokenizer, init_from, resumed=has_checkpoint)
    iterator, val_batches = _batches(task, data, cfg, position, log)
    return Run(cfg, model, tokenizer, data, runner, runner.place_state(state), manager, start, iterator,
               val_batches)


def _existing_run(workdir: str) -> tuple[Optional[Config], bool]:
    """``workdir``'s saved config (None in a new run) and whether it holds checkpoints; checkpoints
    without their config cannot be resumed."""
    saved_cfg = read_run_config(workdir) if os.path.isfile(os.path.join(workdir, CONFIG_FILE)) else None
    has_checkpoint = bool(ckpt.steps_on_disk(workdir))
    ckpt.check_folder(os.path.join(os.path.abspath(workdir), DAMAGED))  # where damaged steps go
    if has_checkpoint and saved_cfg is None:
        raise CheckpointError(f"{workdir}: holds checkpoints but no {CONFIG_FILE}; "
                              "restore it or use another --workdir")
    return saved_cfg, has_checkpoint


def _write_run_files(workdir: str, cfg: Config, tokenizer, init_from, resumed: bool) -> None:
    """The run's own files (by the primary process): its writer's mark and resolved config, and for
    a new run its tokenizer and fine-tuning source."""
    guard.mark(workdir, "train")
    if not resumed:
        tokenizer.save(workdir)
        _record_source(workdir, init_from)
    save_config(cfg, os.path.join(workdir, CONFIG_FILE))


def _batches(task, data: DataSplit, cfg: Config, position: dict, log):
    """The training batches from ``position`` (prefetched) and the fixed validation batches."""
    iterator = task.batches(data.train, cfg, **position)
    iterator.part = (jax.process_index(), jax.process_count())  # streamed data: each process its rows
    if jax.process_count() > 1 and getattr(data.train, "reads_parts", False):
        log(f"process {jax.process_index()} of {jax.process_count()} reads its "
            f"{cfg.train.batch_size // jax.process_count()} rows of every batch from the shards")
    iterator = Prefetcher(iterator)
    val_batches = task.eval_batches(data.val, cfg)
    return iterator, validation_batches(val_batches, len(data.val), log)


def _record_source(workdir: str, init_from) -> None:
    """Which weights a new run started from (``SOURCE_FILE``; none: it was initialised afresh)."""
    path = os.path.join(workdir, SOURCE_FILE)
    if init_from is None:
        if os.path.isfile(path):
            os.remove(path)
        return
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"init_from": os.path.abspath(init_from.where)}, f)


def check_same_source(workdir: str, where: str, log: Callable[[str], None] = print) -> None:
    """``--init-from`` on a run that already has checkpoints: it resumes from its own, so only the
    source it recorded starting from is accepted; another one would be ignored. A run that
    records none (started afresh, imported, or older than the record) resumes, and says that it
    ignores ``--init-from``."""
    try:
        with open(os.path.join(workdir, SOURCE_FILE), encoding="utf-8") as f:
            recorded = json.load(f).get("init_from")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if recorded is None:
        log(f"--init-from {where} is ignored: {workdir} holds a run with checkpoints, which resumes from its "
            "own weights (use a new --workdir to fine-tune from it)")
    elif recorded != os.path.abspath(where):
        raise CheckpointError(f"--workdir {workdir}: holds a run with checkpoints started from {recorded}, which "
                              f"resumes from its own weights, so --init-from {where} would be ignored: fine-tune "
                              "into a new --workdir, or give its own source to continue it")


def _read_raw(cfg: Config, task, workdir: str, paths, skip_bad: bool, has_checkpoint: bool, init_from, log):
    """(tokenizer, read corpus) of raw files: the run's tokenizer, the weights', or a new one."""
    corpus = task.read(cfg, paths, skip_bad)
    if corpus.skipped:
        log(f"skipped {corpus.skipped} bad lines in {', '.join(paths)} (first: {corpus.first_error})")
    if has_checkpoint:
        tokenizer = load_run_tokenizer(workdir, read_run_config(workdir))
        check_coverage(tokenizer, corpus.texts, ", ".join(paths), log)
    elif init_from is not None:
        tokenizer = init_from.tokenizer
        log(f"starting from the weights and tokenizer of {init_from.where}")
        check_coverage(tokenizer, corpus.texts, ", ".join(paths), log, f"the tokenizer of --init-from {init_from.where}",
                       "fine-tune a model whose tokenizer knows it, or train a new run on it without --init-from")
    else:
        if os.path.isfile(os.path.join(workdir, "tokenizer.json")):
            log(f"retraining the tokenizer in {workdir}: no checkpoint was trained with it")
        tokenizer = build_tokenizer(cfg, corpus.texts)
    return tokenizer, corpus


def _data_position(saved: dict, data: DataSplit, cfg: Config, log) -> dict:
    position = {"epoch": int(saved.get("epoch", 0)), "index": int(saved.get("index", 0))}
    changed = []
    if saved.get("fingerprint", data.fingerprint) != data.fingerprint:
        changed.append("the training data changed (another file, split or encoding)")
    if saved.get("batch_size", cfg.train.batch_size) != cfg.train.batch_size:
        changed.append(f"train.batch_size changed from {saved.get('batch_size')}")
    if changed:
        log(f"{'; '.join(changed)}: the data order starts again at epoch 0")
        return {"epoch": 0, "index": 0}
    if saved and saved.get("plan", 1) != PLAN and position["index"]:
        log(f"the checkpoint's data position is in an earlier version's batch order: the rest of epoch "
            f"{position['epoch']} follows this version's (some of its examples may repeat or be left out)")
    return position


def data_meta(iterator: BatchIterator, data: DataSplit, cfg: Config) -> dict:
    return {**iterator.state(), "fingerprint": data.fingerprint, "batch_size": cfg.train.batch_size,
            "seed": cfg.train.seed, "processes": jax.process_count(), "plan": PLAN}
