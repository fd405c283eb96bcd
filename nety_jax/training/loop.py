"""The training loop: set up (setup.py), then steps, metrics, validation and checkpoints.

Restarting the same command resumes from the newest intact checkpoint: the
state, the rng and the data position come back, so the run continues exactly.
SIGTERM and SIGINT save a checkpoint and exit cleanly; a non-finite loss stops
the run and keeps the last good checkpoint; a checkpoint that cannot be written
(a full disk) stops the run with the newest complete one named.
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Callable, Optional, Sequence, Union

from nety_jax.config import Config
from nety_jax.errors import CheckpointError, ConfigError, TrainingDiverged
from nety_jax.runs import checkpoints as ckpt
from nety_jax.runs import guard
from nety_jax.runs.kinds import identify_dir
from nety_jax.runs.files import checkpoint_dir
from nety_jax.runs.quiet import first_line
from nety_jax.training.control import MetricSums, RunLock, StopFlag
from nety_jax.training.evaluation import evaluate, reply_scores
from nety_jax.training.flops import Throughput, peak_flops
from nety_jax.training.memory import check_step
from nety_jax.training.metrics import MetricsWriter, NullWriter, plot_losses
from nety_jax.training.optim import make_schedule
from nety_jax.training.parallel import is_primary, local, maybe_initialize_distributed
from nety_jax.training.prepare_data import prepared_dir
from nety_jax.training.setup import Run, check_workdir, data_meta, prepare


class _Saver:
    """Checkpoint writes, whose (async) failures surface as one clear error."""

    def __init__(self, run: Run, workdir: str):
        self.run, self.workdir = run, workdir
        self.last = run.start if ckpt.steps_on_disk(workdir) else None

    def save(self, step: int, state, val_loss: Optional[float]) -> None:
        meta = {"data": data_meta(self.run.iterator, self.run.data, self.run.cfg),
                "config": self.run.cfg.to_dict(), "step": step}
        self._guard(step, lambda: ckpt.save(self.run.manager, step, state, meta, val_loss))
        self.last = step

    def wait(self, step: int) -> None:
        self._guard(step, self.run.manager.wait_until_finished)

    def _guard(self, step, fn):
        try:
            fn()
        except Exception as e:  # Orbax reports I/O failures of async writes here
            try:  # let earlier saves finish: they may be intact
                self.run.manager.wait_until_finished()
            except Exception:
                pass
            newest = ckpt.latest_step(self.workdir)
            kept = f"the newest complete checkpoint is step {newest}" if newest is not None else \
                "no checkpoint had been written yet"
            raise CheckpointError(f"could not write the checkpoint of step {step} in "
                                  f"{checkpoint_dir(self.workdir)} ({first_line(e)}); {kept}") from None


def _progress(total: int, start: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, mininterval=0.5)


def _validate(run: Run, state, step: int, writer, say) -> dict:
    metrics = evaluate(run.runner, state, run.val_batches)
    if not metrics:  # no token to score (setup.py said so): no numbers, no best checkpoint
        return {}
    metrics.update(reply_scores(run.model, state.variables, run.cfg, run.tokenizer, run.data.val))
    writer.write(step, "val", metrics)
    say(f"step {step}: validation " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    return metrics


class _DamageReport:
    """Says when more damaged records of prepared data were skipped (``--skip-bad``) since it last did."""

    def __init__(self, run: Run):
        self.damage, self.said = run.data.damage, 0

    def __call__(self, step: int, say) -> None:
        if self.damage is not None and self.damage.count > self.said:
            self.said = self.damage.count
            say(f"step {step}: skipped {self.said} damaged records of the prepared data so far (--skip-bad; "
                f"first: {self.damage.first})")

    @property
    def skipped(self) -> int:
        return 0 if self.damage is None else self.damage.count


def _loop(run: Run, workdir: str, writer, bar, say, stop: StopFlag, saver: _Saver) -> tuple:
    t = run.cfg.train
    schedule = make_schedule(t)
    sums, state, val_metrics, pending = MetricSums(), run.state, {}, None
    meter = Throughput(run.model, peak_flops(run.runner.step_devices, run.cfg.model.dtype, t.peak_tflops)[0])
    timer = time.perf_counter()
    status, damage = "finished", _DamageReport(run)
    for step in range(run.start, t.steps):
        batch = next(run.iterator)
        if step == run.start:  # the compiled step's memory, before it runs (memory.py)
            say(check_step(run.runner, run.model, run.cfg, state, batch).describe())
        meter.add(batch)
        state, metrics = run.runner.train(state, batch)
        step_no, is_last = step + 1, step + 1 == t.steps
        if pending is not None:  # read step N-1 after dispatching step N
            sums.add(*pending)
        pending = (step_no, metrics)
        boundary = (is_last or stop.signal or not step_no % t.log_every or not step_no % t.eval_every
                    or not step_no % t.checkpoint_every)
        if bar is not None:
            bar.update(1)
        if not boundary:
            continue
        sums.add(*pending)
        pending = None
        seconds = max(time.perf_counter() - timer, 1e-9)
        values = sums.means() | {"learning_rate": float(schedule(step)),
                                 "tokens_per_s": sums.sums["tokens"] / seconds} | meter.values(seconds)
        writer.write(step_no, "train", values)
        if bar is not None:
            mfu = {} if values["mfu"] is None else {"mfu": f"{100 * values['mfu']:.1f}%"}
            bar.set_postfix(loss=f"{values['loss']:.3f}", lr=f"{values['learning_rate']:.2e}",
                            tok_s=f"{values['tokens_per_s']:.0f}", **mfu, refresh=False)
        sums.reset()
        damage(step_no, say)
        val_loss = None
        if run.val_batches and (not step_no % t.eval_every or is_last):
            val_metrics = _validate(run, state, step_no, writer, say)
            val_loss = val_metrics.get("loss")
        if not step_no % t.checkpoint_every or is_last or stop.signal:
            saver.save(step_no, state, val_loss)
        timer = time.perf_counter()
        if stop.signal:
            saver.wait(step_no)
            say(f"{stop.signal}: saved step {step_no} in {checkpoint_dir(workdir)}; "
                "run the same command to resume")
            status = "interrupted"
            break
    if pending is not None:
        sums.add(*pending)
    return state, val_metrics, status


def _check_arguments(cfg, workdir, data) -> None:
    if not isinstance(cfg, Config):
        raise ConfigError(f"cfg must be a Config (from load_config), got {type(cfg).__name__}")
    if not isinstance(workdir, (str, os.PathLike)) or not str(workdir).strip():
        raise ConfigError(f"workdir={workdir!r} must be a directory path")
    files = [data] if isinstance(data, (str, os.PathLike)) else data
    if data is not None and (not isinstance(files, (list, tuple))
                             or not all(isinstance(f, (str, os.PathLike)) for f in files)):
        raise ConfigError(f"data={data!r} must be a file path or a list of them (None: the shipped data)")


def train(cfg: Config, workdir: str, data: Union[str, Sequence[str], None] = None,
          skip_bad: bool = False, log: Callable[[str], None] = print, progress: bool = True,
          init_from=None) -> dict:
    """Trains (or resumes) a run in ``workdir``; returns a summary dict.

    ``data``: a pairs file (seq2seq models) or one or many text files (language
    models); by default the corpus or text shipped with the package. ``init_from``: a
    ``training.init_from.Source`` whose tokenizer and parameters a new run starts from
    (``cfg`` from ``init_from.finetune_config``); ignored when the run resumes.
    """
    _check_arguments(cfg, workdir, data)
    try:
        return _train(cfg, workdir, data, skip_bad, log, progress, init_from)
    except OSError as e:  # a full disk, a read-only or vanished directory
        where, newest = e.filename or workdir, ckpt.latest_step(workdir)
        kept = f"the newest complete checkpoint is step {newest}" if newest is not None else \
            "no checkpoint had been written yet"
        raise CheckpointError(f"{where}: cannot write ({e.strerror or e}); {kept}") from None


def _holding(paths) -> contextlib.AbstractContextManager:
    """A prepared directory is held while training streams from it (``prepare --overwrite`` of
    it is refused meanwhile: it would replace the shards under the run)."""
    prepared = prepared_dir(paths)
    return guard.reading(prepared, "--data/--text") if prepared is not None else contextlib.nullcontext()


def _train(cfg: Config, workdir: str, data, skip_bad: bool, log, progress: bool, init_from=None) -> dict:
    maybe_initialize_distributed()
    check_workdir(workdir)
    try:
        os.makedirs(workdir, exist_ok=True)
        if is_primary() and identify_dir(workdir) is None:  # marked at once: a run stopped early is a run
            guard.mark(workdir, "train")
    except OSError as e:
        raise CheckpointError(f"{workdir}: cannot create the run directory ({e.strerror})") from None
    paths = [data] if isinstance(data, str) else data
    # held from here to the end: an importer's --overwrite of the directory (a run it made, which
    # train continues) is refused meanwhile; it replaced the run under a starting training
    with guard.reading(workdir, "--workdir"), RunLock(workdir) if is_primary() else contextlib.nullcontext(), \
            _holding(paths):
        check_workdir(workdir)  # again, held: what was checked may have been replaced before the lock
        run = prepare(cfg, workdir, paths, skip_bad, log, init_from)
        if run.start >= run.cfg.train.steps:
            log(f"{workdir} is already at step {run.start} >= train.steps={run.cfg.train.steps}: "
                "nothing to train (raise --steps to continue)")
            run.manager.close()
            return {"status": "finished", "start_step": run.start, "step": run.start, "val": {},
                    "plot": None, "workdir": workdir}
        log(f"data: {run.data.description}; padding {100 * run.iterator.padding_fraction():.1f}% of "
            f"batch tokens; backend {run.runner.describe()}")
        resumed = run.start if ckpt.steps_on_disk(workdir) else None
        writer = MetricsWriter(workdir, resume_step=resumed if resumed is not None else 0) if is_primary() \
            else NullWriter()
        bar = _progress(run.cfg.train.steps, run.start, progress)
        say = bar.write if bar is not None else log
        saver = _Saver(run, workdir)
        try:
            with StopFlag() as stop:
                state, val, status = _loop(run, workdir, writer, bar, say, stop, saver)
            saver.wait(int(local(state.step)))
        except TrainingDiverged as e:
            kept = f"the last good checkpoint (step {saver.last}) is kept" if saver.last is not None \
                else "no checkpoint had been saved yet"
            raise TrainingDiverged(f"{e}: training stopped; {kept} in {checkpoint_dir(workdir)}. "
                                   "Lower train.learning_rate or set train.clip_norm") from None
        finally:
            run.iterator.close()  # the prefetch thread
            try:
                run.manager.close()
            except Exception:  # an earlier failure is the one to report
                pass
            if bar is not None:
                bar.close()
            writer.close()
    return {"status": status, "start_step": run.start, "step": int(local(state.step)), "val": val,
            "plot": plot_losses(workdir) if is_primary() else None, "workdir": workdir,
            "skipped_records": _DamageReport(run).skipped}
