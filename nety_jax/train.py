"""The training loop: data -> tokenizer -> compiled steps -> metrics -> Orbax checkpoints.

Restarting the same command resumes from the latest checkpoint: the state, the
rng and the data position come back, so the run continues exactly. SIGTERM and
SIGINT save a checkpoint and exit cleanly; a non-finite loss stops the run and
keeps the last good checkpoint.
"""
from __future__ import annotations

import math
import os
import signal
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from nety_jax import checkpoint as ckpt
from nety_jax.config import Config, save_config, replace_model
from nety_jax.data import BatchIterator, encode_pairs, eval_batches, read_pairs, split_pairs, \
    default_corpus_path
from nety_jax.errors import CheckpointError, TrainingDiverged
from nety_jax.generate import generate_jit
from nety_jax.metrics import MetricsWriter, plot_losses
from nety_jax.optim import make_schedule
from nety_jax.parallel import Runner, maybe_initialize_distributed
from nety_jax.prompts import decode_replies
from nety_jax.steps import create_train_state
from nety_jax.tokenizer import SentencePieceTokenizer, WordTokenizer, load_tokenizer


class _StopFlag:
    """SIGTERM / SIGINT set a flag; the loop saves and exits at the next step boundary."""

    def __init__(self):
        self.signal = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def prepare_tokenizer(cfg: Config, workdir: str, train_pairs, log):
    if os.path.isfile(os.path.join(workdir, "tokenizer.json")):
        return load_tokenizer(workdir)
    texts = [t for pair in train_pairs for t in pair]
    if cfg.data.tokenizer == "word":
        tok = WordTokenizer.build(texts, cfg.data.vocab_size)
    else:
        tok = SentencePieceTokenizer.train(texts, cfg.data.vocab_size, cfg.data.spm_model_type,
                                           cfg.data.lowercase)
    tok.save(workdir)
    log(f"tokenizer: {cfg.data.tokenizer}, {tok.vocab_size} ids, saved in {workdir}")
    return tok


def _reply_scores(state, cfg: Config, tokenizer, val_pairs, val_data) -> dict:
    """Greedy replies to the first validation pairs, scored with sacrebleu."""
    import sacrebleu
    import dataclasses
    n = min(cfg.train.bleu_samples, len(val_pairs))
    if n == 0:
        return {}
    dcfg = dataclasses.replace(cfg.decode, temperature=0.0, beam_size=1,
                               max_new_tokens=min(cfg.decode.max_new_tokens, cfg.data.max_tgt_len))
    batch = eval_batches(val_data, n, cfg.data, limit=1)[0]
    out = generate_jit(state.variables, jnp.asarray(batch["src"]), jnp.asarray(batch["src_len"]),
                       jax.random.PRNGKey(0), cfg=cfg.model, dcfg=dcfg)
    hyps = decode_replies(tokenizer, out["tokens"], n)
    refs = [tokenizer.decode(batch["tgt_out"][i].tolist()) for i in range(n)]
    return {"bleu": sacrebleu.corpus_bleu(hyps, [refs]).score,
            "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score}


def evaluate(runner: Runner, state, batches: list[dict]) -> dict:
    total = None
    for batch in batches:
        sums = jax.device_get(runner.evaluate(state, batch))
        total = sums if total is None else {k: total[k] + sums[k] for k in total}
    tokens = max(float(total["tokens"]), 1.0)
    loss = float(total["nll_sum"]) / tokens
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)),
            "accuracy": float(total["correct"]) / tokens}


def train(cfg: Config, workdir: str, data_path: Optional[str] = None, skip_bad: bool = False,
          log: Callable[[str], None] = print, progress: bool = True) -> dict:
    """Trains (or resumes) a run in ``workdir``; returns a summary dict."""
    maybe_initialize_distributed()
    os.makedirs(workdir, exist_ok=True)
    data_path = data_path or default_corpus_path()
    saved_cfg = None
    if os.path.isfile(os.path.join(workdir, ckpt.CONFIG_FILE)):
        saved_cfg = ckpt.read_run_config(workdir)

    report = read_pairs(data_path, cfg.data, skip_bad=skip_bad)
    if report.skipped:
        log(f"skipped {report.skipped} bad lines in {data_path} (first: {report.first_error})")
    train_pairs, val_pairs = split_pairs(report.pairs, cfg.data.val_fraction, cfg.train.seed)
    tokenizer = prepare_tokenizer(cfg, workdir, train_pairs, log)
    cfg = replace_model(cfg, vocab_size=tokenizer.vocab_size)
    if saved_cfg is not None:
        diffs = ckpt.model_differences(saved_cfg, cfg)
        if diffs:
            raise CheckpointError(f"{workdir} holds a checkpoint from another config: {diffs[0]}"
                                  f"{f' (and {len(diffs) - 1} more)' if len(diffs) > 1 else ''}; "
                                  "use another --workdir")
    save_config(cfg, os.path.join(workdir, ckpt.CONFIG_FILE))

    train_data = encode_pairs(train_pairs, tokenizer, cfg.data)
    val_data = encode_pairs(val_pairs, tokenizer, cfg.data)
    if train_data.truncated or val_data.truncated:
        log(f"cut {train_data.truncated + val_data.truncated} pairs longer than "
            f"data.max_src_len={cfg.data.max_src_len} / data.max_tgt_len={cfg.data.max_tgt_len}")
    runner = Runner(cfg)
    val_batches = eval_batches(val_data, cfg.train.batch_size, cfg.data, cfg.train.eval_batches) \
        if len(val_data) else []

    state = create_train_state(cfg, jax.random.PRNGKey(cfg.train.seed))
    manager = ckpt.make_manager(workdir, cfg)
    start, position = 0, {"epoch": 0, "index": 0}
    last = manager.latest_step()
    if last is not None:
        state, meta = ckpt.restore(manager, last, ckpt.abstract_of(state))
        start, position = int(state.step), meta["data"]
        log(f"resumed from {workdir} at step {start}")
    it = BatchIterator(train_data, cfg.train.batch_size, cfg.data, cfg.train.seed, **position)
    log(f"data: {len(train_data)} training / {len(val_data)} validation pairs from {data_path}; "
        f"padding {100 * it.padding_fraction():.1f}% of batch tokens; "
        f"backend {runner.backend} on {runner.num_devices} device(s)")
    state = runner.place_state(state)

    total = cfg.train.steps
    schedule = make_schedule(cfg.train)
    writer = MetricsWriter(workdir)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, mininterval=0.5)
    acc = {"loss_sum": 0.0, "nll_sum": 0.0, "correct": 0.0, "tokens": 0.0, "grad_norm": 0.0, "n": 0}
    timer = time.perf_counter()
    summary = {"status": "finished", "start_step": start}
    last_saved = last
    val_metrics = {}

    def meta():
        return {"data": it.state(), "config": cfg.to_dict()}

    def absorb(step_no, metrics):
        m = jax.device_get(metrics)
        if not np.isfinite(m["loss_sum"]) or not np.isfinite(m["grad_norm"]):
            manager.wait_until_finished()
            kept = f"the last good checkpoint (step {last_saved}) is kept" if last_saved is not None \
                else "no checkpoint had been saved yet"
            raise TrainingDiverged(f"non-finite loss at step {step_no}: training stopped; {kept} "
                                   f"in {ckpt.checkpoint_dir(workdir)}. Lower train.learning_rate "
                                   "or set train.clip_norm")
        for k in ("loss_sum", "nll_sum", "correct", "tokens"):
            acc[k] += float(m[k])
        acc["grad_norm"] += float(m["grad_norm"])
        acc["n"] += 1

    try:
        with _StopFlag() as stop:
            pending = None
            for step in range(start, total):
                batch = next(it)
                state, metrics = runner.train(state, batch)
                step_no = step + 1
                if pending is not None:  # read step N-1 after dispatching step N
                    absorb(*pending)
                pending = (step_no, metrics)
                is_last = step_no == total
                boundary = (step_no % cfg.train.log_every == 0 or is_last or stop.signal
                            or step_no % cfg.train.eval_every == 0
                            or step_no % cfg.train.checkpoint_every == 0)
                if not boundary:
                    if bar is not None:
                        bar.update(1)
                    continue
                absorb(*pending)
                pending = None
                elapsed = time.perf_counter() - timer
                tokens = acc["tokens"]
                train_metrics = {"loss": acc["loss_sum"] / max(tokens, 1),
                                 "nll": acc["nll_sum"] / max(tokens, 1),
                                 "accuracy": acc["correct"] / max(tokens, 1),
                                 "grad_norm": acc["grad_norm"] / max(acc["n"], 1),
                                 "learning_rate": float(schedule(step)),
                                 "tokens_per_s": tokens / max(elapsed, 1e-9)}
                writer.write(step_no, "train", train_metrics)
                if bar is not None:
                    bar.set_postfix(loss=f"{train_metrics['loss']:.3f}",
                                    lr=f"{train_metrics['learning_rate']:.2e}",
                                    tok_s=f"{train_metrics['tokens_per_s']:.0f}", refresh=False)
                    bar.update(1)
                acc = {k: 0.0 for k in acc} | {"n": 0}
                timer = time.perf_counter()

                val_loss = None
                if val_batches and (step_no % cfg.train.eval_every == 0 or is_last):
                    val_metrics = evaluate(runner, state, val_batches)
                    val_metrics.update(_reply_scores(state, cfg, tokenizer, val_pairs, val_data))
                    writer.write(step_no, "val", val_metrics)
                    val_loss = val_metrics["loss"]
                    text = ", ".join(f"{k} {v:.3f}" for k, v in val_metrics.items())
                    (bar.write if bar is not None else log)(f"step {step_no}: validation {text}")
                    timer = time.perf_counter()
                if step_no % cfg.train.checkpoint_every == 0 or is_last or stop.signal:
                    ckpt.save(manager, step_no, state, meta(), val_loss, force=True)
                    last_saved = step_no
                if stop.signal:
                    manager.wait_until_finished()
                    log(f"{stop.signal}: saved step {step_no} in {ckpt.checkpoint_dir(workdir)}; "
                        "run the same command to resume")
                    summary["status"] = "interrupted"
                    break
            if pending is not None:
                absorb(*pending)
    finally:
        manager.wait_until_finished()
        manager.close()
        if bar is not None:
            bar.close()
        writer.close()
    plot = plot_losses(workdir)
    summary.update(step=int(jax.device_get(state.step)), val=val_metrics, plot=plot,
                   workdir=workdir)
    return summary
