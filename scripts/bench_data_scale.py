"""Issue 27's data targets at scale, in one run: ``python scripts/bench_data_scale.py --gb 2 --pairs-m 10``.

In a temporary directory (deleted at the end; ``--keep`` keeps it), it generates synthetic text of
``--gb`` GB and of a quarter of that, and ``--pairs-m`` million JSONL pairs, then measures

- ``nety-jax prepare`` of each (``--tokenizer`` from a 1 MB sample, one worker per core): wall
  time, and throughput per CPU-second of the prepare process and its workers (what a core
  delivers, whatever else shares the machine), with the peak RSS of its largest process;
- ``nety-jax train --text DIR`` on both text sizes (``configs/gpt_tiny.yaml``, ``--steps``):
  peak RSS (independent of the corpus size: the target is < 3 GB) and the seconds from launching
  the command to its first step (the memory plan it prints just before; target < 30 s);
- the data side of a resume in the middle of the big corpus's epoch: opening the prepared
  directory, planning the epoch and making the batch at its middle, in a fresh process (< 5 s);
- the input pipeline alone (the prefetched batches) against the train step's consumption
  (examples per second of the compiled step on one fixed batch), for the tiny and base configs
  (``configs/tiny.yaml`` and ``configs/base.yaml``, pairs) and the tiny GPT (text): target >= 10x.

Every process runs under ``nice -n 10`` (a shared machine); the load average is printed beside
each number. Timings are only comparable within a run.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

from bench_util import cpu_seconds, status_mb  # noqa: E402

CONFIGS = os.path.join(ROOT, "configs")
ENV = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
TRAIN_SET = ["train.log_every=5", "train.eval_batches=1", "train.bleu_samples=0", "train.warmup_steps=1",
             "data.subword_alpha=0"]


def load() -> float:
    return os.getloadavg()[0]


def synthetic_pairs(path: str, millions: float, seed: int = 0) -> None:
    """JSONL pairs of 3 to 15 words each (Zipf-like over 3,000 made-up words)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyzéè"))
    words = np.array(["".join(rng.choice(letters, rng.integers(2, 9))) for _ in range(3000)])
    p = 1.0 / np.arange(1, len(words) + 1)
    p /= p.sum()
    total, block = int(millions * 1_000_000), 20_000
    with open(path, "w", encoding="utf-8") as f:
        for start in range(0, total, block):
            n = min(block, total - start)
            ids = rng.choice(len(words), size=(n, 2, 15), p=p)
            lens = rng.integers(3, 16, size=(n, 2))
            f.write("".join(json.dumps({"input": " ".join(words[r[0, :a]]), "target": " ".join(words[r[1, :b]])},
                                       ensure_ascii=False) + "\n" for r, (a, b) in zip(ids, lens)))


def repeated(path: str, make, copies: int) -> None:
    """``make(block_path)`` once, then ``path`` = ``copies`` copies of it: generating text in Python is
    slower than preparing it, and the measurements do not depend on the text repeating."""
    block = path + ".block"
    make(block)
    with open(path, "wb") as out:
        for _ in range(copies):
            with open(block, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 24)
    os.remove(block)


def head(src: str, dst: str, size: int) -> None:
    """The first ``size`` bytes of ``src`` (cut after a line end) into ``dst``."""
    with open(src, "rb") as f, open(dst, "wb") as out:
        while size > 0:  # in pieces: this process's peak RSS stays small
            piece = f.read(min(size, 1 << 24))
            size -= len(piece)
            out.write(piece if size > 0 else piece.rsplit(b"\n", 1)[0] + b"\n")


MAXRSS = "nety-bench-maxrss-kb"


def measured(cmd: list[str], watch: str = "") -> dict:
    """Runs ``cmd`` (niced): wall seconds, CPU seconds of it and its descendants, peak RSS (MB) of
    the largest of them, and the seconds until a stdout line containing ``watch`` appeared.

    The peak RSS is GNU time's: the ``ru_maxrss`` this process gets from ``wait4`` would include
    its own peak (Python starts children with vfork, and exec folds the shared memory's high-water
    mark into the child's), while ``time`` forks its child from a small process."""
    start, seen = time.perf_counter(), {}
    proc = subprocess.Popen(["/usr/bin/time", "-f", f"{MAXRSS} %M", "nice", "-n", "10", *cmd],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    lines = []

    def read():
        for line in proc.stdout:
            lines.append(line)
            if watch and watch in line and "at_s" not in seen:
                seen["at_s"] = time.perf_counter() - start
                seen["cpu_at_s"] = timed_command_cpu_seconds(proc.pid)

    reader = threading.Thread(target=read)
    reader.start()
    _, status, usage = os.wait4(proc.pid, 0)
    reader.join()
    wall = time.perf_counter() - start
    if status:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{''.join(lines[-30:])}")
    peak_kb = [int(line.split()[1]) for line in lines if line.startswith(MAXRSS)][-1]
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": peak_kb / 1024,
            "load": load(), **seen, "out": [line for line in lines if not line.startswith(MAXRSS)]}


def timed_command_cpu_seconds(time_pid: int) -> float:
    """CPU seconds (user + system) used so far by the command GNU time (``time_pid``) runs (``nice``
    execs it: one process)."""
    with open(f"/proc/{time_pid}/task/{time_pid}/children") as f:
        return cpu_seconds(int(f.read().split()[0]))


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "nety_jax.cli", *args]


def prepare(config: str, option: str, source: str, out: str, tokenizer: str) -> dict:
    r = measured(cli("prepare", "--config", config, option, source, "--out", out, "--tokenizer", tokenizer,
                     "--no-progress"))
    mb = os.path.getsize(source) / 2**20
    with open(os.path.join(out, "prepared.json")) as f:
        manifest = json.load(f)
    examples = sum(s["examples"] for s in manifest["splits"].values())
    tokens = sum(s["tokens"] for s in manifest["splits"].values())
    return {"source_mb": mb, "examples": examples, "tokens": tokens, "wall_s": r["wall_s"], "cpu_s": r["cpu_s"],
            "mb_per_cpu_s": mb / r["cpu_s"], "examples_per_cpu_s": examples / r["cpu_s"],
            "mb_per_s_wall": mb / r["wall_s"], "peak_rss_mb": r["peak_rss_mb"], "load": r["load"]}


def train_run(config: str, option: str, data: str, workdir: str, steps: int) -> dict:
    sets = [x for s in TRAIN_SET + [f"train.eval_every={steps}", f"train.checkpoint_every={steps}"]
            for x in ("--set", s)]
    r = measured(cli("train", "--config", config, option, data, "--workdir", workdir, "--steps", str(steps),
                     "--no-progress", *sets), watch="memory per device")
    return {"first_step_s": r.get("at_s"), "first_step_cpu_s": r.get("cpu_at_s"), "wall_s": r["wall_s"], "peak_rss_mb": r["peak_rss_mb"],
            "load": r["load"]}


def part_resume(config: str, data: str) -> dict:
    """In this (fresh) process: the data side of a resume at the middle of the epoch."""
    from nety_jax.config import load_config
    from nety_jax.models import get_model
    from nety_jax.training.prepare_data import open_prepared
    cfg = load_config(config)
    task = get_model(cfg.model).task  # the model's code, imported by any resume before its data
    start, cpu = time.perf_counter(), time.process_time()
    _, split = open_prepared(cfg, data)
    opened = time.perf_counter()
    iterator = task.batches(split.train, cfg, index=(len(split.train) // cfg.train.batch_size) // 2)
    next(iterator)
    end = time.perf_counter()
    return {"open_s": opened - start, "plan_and_batch_s": end - opened, "total_s": end - start,
            "cpu_s": time.process_time() - cpu,
            "examples": len(split.train), "batches_per_epoch": iterator.batches_per_epoch,
            "vm_hwm_mb": status_mb("VmHWM")}


def part_rates(config: str, data: str, batches: int, steps: int, seconds: float = 2.0) -> dict:
    """In this process: examples/s of the prefetched input pipeline alone (at least ``batches``
    batches and ``seconds``), and of the compiled train step on one fixed batch (groups of ``steps``
    calls, each waited for, for at least ``seconds``, after a first call, which compiles)."""
    import jax
    from nety_jax.config import load_config
    from nety_jax.data.prefetch import Prefetcher
    from nety_jax.training.setup import prepare as setup
    cfg = load_config(config, TRAIN_SET)
    workdir = tempfile.mkdtemp(prefix="bench-rates-")
    run = setup(cfg, workdir, [data], False, lambda *_: None)
    run.iterator.close()
    pipeline = Prefetcher(run.iterator.iterator)
    next(pipeline)
    n, t0 = 0, time.perf_counter()
    while n < batches or time.perf_counter() - t0 < seconds:
        batch = next(pipeline)
        n += 1
    pipe_s = time.perf_counter() - t0
    pipeline.close()
    state, _ = run.runner.train(run.state, batch)
    jax.block_until_ready(state)
    m, t0 = 0, time.perf_counter()
    while m == 0 or time.perf_counter() - t0 < seconds:  # groups of ``steps``, dispatched ahead
        for _ in range(steps):
            state, _ = run.runner.train(state, batch)
        jax.block_until_ready(state)
        m += steps
    step_s = time.perf_counter() - t0
    shutil.rmtree(workdir, ignore_errors=True)
    b = cfg.train.batch_size
    return {"config": os.path.basename(config), "batch_size": b, "batches": n, "steps": m,
            "pipeline_examples_per_s": n * b / pipe_s, "step_examples_per_s": m * b / step_s,
            "ratio": (n * b / pipe_s) / (m * b / step_s), "load": load()}


def run_part(*args: str) -> dict:
    r = measured([sys.executable, __file__, "--part", *args])
    return {**json.loads([line for line in r["out"] if line.startswith("{")][-1]), "load": r["load"]}


def base_pairs(tmp: str, tok_sample: str) -> str:
    """A pairs directory prepared with configs/base.yaml (its own 8,000-id tokenizer)."""
    src = os.path.join(tmp, "base_pairs.jsonl")
    synthetic_pairs(src, 0.2, seed=7)
    out = os.path.join(tmp, "prepared-base")
    measured(cli("prepare", "--config", os.path.join(CONFIGS, "base.yaml"), "--data", src, "--out", out,
                 "--no-progress", "--set", "data.subword_alpha=0"))
    return out


def train_and_resume(dirs: dict, steps: int, tmp: str, say) -> None:
    gpt, tiny = os.path.join(CONFIGS, "gpt_tiny.yaml"), os.path.join(CONFIGS, "tiny.yaml")
    for name, config, option in (("small_text", gpt, "--text"), ("big_text", gpt, "--text"),
                                 ("pairs", tiny, "--data")):
        say(f"train_{name}", train_run(config, option, dirs[name], os.path.join(tmp, f"run-{name}"), steps))
    say("resume_big_text", run_part("resume", gpt, dirs["big_text"]))
    say("resume_pairs", run_part("resume", tiny, dirs["pairs"]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=2.0, help="GB of text (a second corpus is a quarter of it)")
    ap.add_argument("--pairs-m", type=float, default=10.0, help="millions of pairs")
    ap.add_argument("--steps", type=int, default=20, help="training steps of each train run")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--block-mb", type=float, default=256, help="text generated once, then repeated to --gb")
    ap.add_argument("--skip-rates", action="store_true", help="no pipeline-vs-step rates (they do not depend "
                                                              "on the corpus size)")
    ap.add_argument("--rates-only", action="store_true", help="only the pipeline-vs-step rates (no train "
                                                              "runs, no resume)")
    ap.add_argument("--tmp", help="where the temporary directory goes (default: the system's)")
    ap.add_argument("--part", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.part:
        kind, *rest = args.part
        out = part_resume(*rest) if kind == "resume" else part_rates(rest[0], rest[1], 200, 5)
        print(json.dumps(out))
        return
    from bench_data import synthetic_text
    gpt, tiny = os.path.join(CONFIGS, "gpt_tiny.yaml"), os.path.join(CONFIGS, "tiny.yaml")
    tmp = tempfile.mkdtemp(prefix="bench-data-scale-", dir=args.tmp)
    say = lambda key, value: print(json.dumps({key: value}), flush=True)  # noqa: E731
    try:
        say("machine", {"cpus": os.cpu_count(), "load": load()})
        t0 = time.perf_counter()
        big, small = os.path.join(tmp, "big.txt"), os.path.join(tmp, "small.txt")
        copies = max(1, round(args.gb * 1024 / args.block_mb))
        repeated(big, lambda p: synthetic_text(p, args.gb * 1024 / copies), copies)
        head(big, small, os.path.getsize(big) // 4)
        pairs = os.path.join(tmp, "pairs.jsonl")
        copies = max(1, round(args.pairs_m))
        repeated(pairs, lambda p: synthetic_pairs(p, args.pairs_m / copies), copies)
        sample, pairs_sample = os.path.join(tmp, "sample.txt"), os.path.join(tmp, "pairs_sample.jsonl")
        head(big, sample, 2**20)
        head(pairs, pairs_sample, 2**20)
        say("generated_s", time.perf_counter() - t0)
        tok_text, tok_pairs = os.path.join(tmp, "tok-text"), os.path.join(tmp, "tok-pairs")
        measured(cli("prepare", "--config", gpt, "--text", sample, "--out", tok_text, "--no-progress"))
        measured(cli("prepare", "--config", tiny, "--data", pairs_sample, "--out", tok_pairs, "--no-progress"))
        dirs = {}
        for name, config, option, src, tok in (("small_text", gpt, "--text", small, tok_text),
                                               ("big_text", gpt, "--text", big, tok_text),
                                               ("pairs", tiny, "--data", pairs, tok_pairs)):
            dirs[name] = os.path.join(tmp, f"prepared-{name}")
            say(f"prepare_{name}", prepare(config, option, src, dirs[name], tok))
            os.remove(src)  # the disk holds the prepared copy only
        if not args.rates_only:
            train_and_resume(dirs, args.steps, tmp, say)
        if args.skip_rates:
            return
        say("rates_gpt_tiny", run_part("rates", gpt, dirs["small_text"]))
        say("rates_tiny", run_part("rates", tiny, dirs["pairs"]))
        say("rates_base", run_part("rates", os.path.join(CONFIGS, "base.yaml"), base_pairs(tmp, pairs_sample)))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
