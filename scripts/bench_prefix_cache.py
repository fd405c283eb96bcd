"""Time to first token over a 10-turn chat, with and without the prefix cache, in the same run.

    python scripts/bench_prefix_cache.py [--gpt RUN] [--demo RUN] [--max-new 16] [--mb 256]

Each turn resends the whole conversation (``Pretrained.chat_prompt``: a language model continues
the history; the hybrid answers the last message). Both chats run in lockstep, greedy, through
``Pretrained.stream`` (what ``nety-jax chat`` does); time to first token is the time to the
stream's first yield (tokenizing, the prefill, the first token). A first pass compiles every
shape and is not timed; the cache is emptied before each timed pass (the median of --repeats
per turn is shown; the hit counts are the last pass's). Without --gpt / --demo a
run is trained for 2 steps (weights do not change the cost): a GPT of 4 layers x 256 with 1024
positions (configs/gpt_tiny.yaml, widened) and configs/demo.yaml.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MESSAGES = [
    "Bonjour, je voudrais organiser un voyage en Bretagne avec ma famille cet été.",
    "Nous sommes quatre, avec deux enfants de huit et douze ans qui aiment la mer.",
    "Quelles villes nous conseilles-tu de visiter pendant une semaine ?",
    "Merci !",
    "Et pour dormir, vaut-il mieux un camping ou une maison de location près de la plage ?",
    "Mon fils voudrait apprendre à faire du surf, est-ce possible à son âge ?",
    "Quels plats typiques devons-nous absolument goûter là-bas ?",
    "Merci !",
    "Faut-il prévoir des vêtements chauds même en juillet ?",
    "Pour finir, combien de temps faut-il pour aller de Paris à Quimper en train ?",
]
GPT_SET = ["model.max_len=1024", "model.d_model=256", "model.heads=4", "model.layers=4", "model.d_ff=1024"]


def train_run(config: str, overrides: list, tag: str) -> str:
    out = tempfile.mkdtemp(prefix=f"bench_prefix-{tag}-")
    sets = [a for o in overrides + ["train.eval_every=2", "train.checkpoint_every=2", "train.warmup_steps=1"]
            for a in ("--set", o)]
    print(f"[bench_prefix_cache] training {tag} for 2 steps in {out}", flush=True)
    subprocess.run([sys.executable, "-m", "nety_jax.cli", "train", "--config", os.path.join(ROOT, "configs", config),
                    "--workdir", out, "--steps", "2", "--no-progress", *sets], cwd=ROOT, check=True,
                   capture_output=True)
    return out


def turn(model, history: list, message: str, max_new: int) -> tuple[float, str, int]:
    """(time to first token, reply, prompt tokens) of one chat turn."""
    start = time.perf_counter()
    prompt = model.chat_prompt(history + [("user", message)], max_new)
    stream = model.stream([prompt], temperature=0.0, max_new_tokens=max_new)
    tokens = next(stream)
    ttft = time.perf_counter() - start
    for tokens in stream:
        pass
    n = len(model.model.prompts.ids(model.tokenizer, prompt, model.config.data))
    return ttft, model.tokenizer.decode(tokens[0].tolist()), n


def chat_pass(plain, cached, max_new: int, mb: float) -> list:
    cached.use_prefix_cache(mb)  # empty
    rows, hist_plain, hist_cached = [], [], []
    for message in MESSAGES:
        t0, reply0, n = turn(plain, hist_plain, message, max_new)
        before = cached.prefix_cache.stats.hit_tokens
        t1, reply1, _ = turn(cached, hist_cached, message, max_new)
        hist_plain += [("user", message), ("assistant", reply0)]
        hist_cached += [("user", message), ("assistant", reply1)]
        rows.append((n, cached.prefix_cache.stats.hit_tokens - before, t0, t1, reply0 == reply1))
    return rows


def bench(name: str, workdir: str, max_new: int, mb: float, repeats: int) -> None:
    from nety_jax.serving.pretrained import load_pretrained
    plain, cached = load_pretrained(workdir), load_pretrained(workdir)
    chat_pass(plain, cached, max_new, mb)  # compiles every shape of this chat
    passes = [chat_pass(plain, cached, max_new, mb) for _ in range(repeats)]
    median = lambda values: sorted(values)[len(values) // 2]
    rows = [(*p[0][:2], median([r[2] for r in p]), median([r[3] for r in p]), all(r[4] for r in p))
            for p in zip(*passes)]  # per turn: the median over the timed passes
    stats = cached.prefix_cache.stats
    print(f"\n{name} ({cached.config.model.arch}, {workdir}); max_new_tokens={max_new}, cache {mb:g} MB, "
          f"median of {repeats} chats")
    print("| turn | prompt tokens | cached | TTFT no cache (ms) | TTFT cache (ms) | ratio | same reply |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for k, (n, hit, t0, t1, same) in enumerate(rows, 1):
        print(f"| {k} | {n} | {hit} | {1000 * t0:.1f} | {1000 * t1:.1f} | {t0 / t1:.2f}x | {'yes' if same else 'NO'} |")
    total0, total1 = sum(r[2] for r in rows), sum(r[3] for r in rows)
    print(f"| all | {sum(r[0] for r in rows)} | {sum(r[1] for r in rows)} | {1000 * total0:.1f} | "
          f"{1000 * total1:.1f} | {total0 / total1:.2f}x | |")
    print(f"hit rate {stats.hit_rate:.0%} ({stats.hits} hits, {stats.misses} misses), "
          f"{stats.hit_tokens}/{stats.prompt_tokens} prompt tokens from the cache, {stats.entries} entries, "
          f"{stats.bytes / 2 ** 20:.1f} MB, {stats.evictions} evictions")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpt", help="a GPT run directory (default: train one for 2 steps)")
    parser.add_argument("--demo", help="a demo (hybrid) run directory (default: train one for 2 steps)")
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--max-new", type=int, default=16)
    parser.add_argument("--mb", type=float, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="timed chats (the median per turn)")
    args = parser.parse_args()
    gpt = args.gpt or train_run("gpt_tiny.yaml", GPT_SET, "gpt")
    bench("GPT", gpt, args.max_new, args.mb, args.repeats)
    if not args.skip_demo:
        demo = args.demo or train_run("demo.yaml", [], "demo")
        bench("demo", demo, args.max_new, args.mb, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
