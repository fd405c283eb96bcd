"""Speculative decoding (prompt lookup) against plain decoding, at batch 1, in one run.

    python scripts/bench_speculative.py [--demo runs/demo] [--gpt RUN] [--copy RUN] [--copy-base RUN]
                                        [--draft-tokens 4] [--rounds 3] [--trained gpt,demo,copy] [--json FILE]
                                        [--malloc keep|keep-arenas|default]
    python scripts/bench_speculative.py --prepare [--copy RUN] [--copy-base RUN]   # make the copy GPT only

Three trained models: the demo (the hybrid of ``make demo``), a tiny GPT (configs/gpt_tiny.yaml;
one is trained briefly into a temporary directory when --gpt is not given) and the copy GPT
(configs/gpt_copy_bench.yaml: weight-bound; ``--prepare`` makes it into --copy, default
runs/bench-spec-induct, with ``train_copy``: a base run on the shipped lines (--copy-base, default
runs/bench-spec-copy), then fine-tunes (``COPY_STAGES``) on documents that quote passages of random
words (``copy_corpus``), which only copying predicts; over an hour on a loaded 2-core CPU, so timing
never trains it: a --copy run short of its steps is refused with one line). Its repeating prompts quote
passages no training text holds (``copy_prompts``); every copy run also prints ``copy_losses``. The tiny
models' steps cost tens of microseconds, against a fixed cost per call of about half a
millisecond: speculation cannot pay much there; the copy GPT is the case speculation is for. Two prompt sets each: prompts whose
reply repeats their text (the hybrid echoes names, places and objects of its input; the GPTs
continue a passage they were just shown) and prompts whose reply does not.
Every prompt runs alone (batch 1) through the compiled generate function (``generate_jit``,
what ``Pretrained.generate`` calls), greedy, plain and with ``speculate=ngram``, alternating
round by round (the machine is shared: only the ratio of the two, measured in the same run,
means anything); per prompt the median of the rounds, summed over the prompts. The replies are
checked identical; tokens per model call and the share of drafted tokens kept come from the
same loop run with its counters. The process runs as `nety-jax` runs (glibc's malloc and JAX's CPU
dispatch set by ``runtime.keep_host_memory``; ``--malloc default`` leaves them alone, as this script
did before 2026-12-06). Prints a table and one JSON object.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PROMPTS = {
    "demo": {
        "repeats": ["Louis prépare une salade de fruits ce soir.", "Quel temps fait-il à Lille en été ?",
                    "Mon ami Inès adore faire de la randonnée.", "Je m'appelle Camille et j'habite à Montpellier."],
        "does not": ["Je me sens assez stressé aujourd'hui.", "Le vent souffle très fort",
                     "Je me sens assez perdu ce matin.", "Merci beaucoup pour ton aide !"],
    },
    "gpt": {
        "repeats": ["Manon va à la pharmacie pour acheter des médicaments. Manon va à la pharmacie",
                    "Le lapin mange des carottes et dort dans son terrier. Le dimanche, le lapin mange",
                    "Chloé achète des pommes de terre et de la crème. Chloé achète des pommes"],
        "does not": ["Le vendredi,", "Souvent, le chat", "En automne, à Marseille,"],
    },
    "copy": {  # "repeats": copy_prompts(), unseen passages quoted again
        "does not": ["Le vendredi,", "Souvent, le chat", "En automne, à Marseille,"],
    },
}
COPY_CONFIG = os.path.join(ROOT, "configs", "gpt_copy_bench.yaml")
COPY_DOCUMENTS = 4000
PUNCTUATION = ".,!?;:«»\""
PROMPT_SEED = 2026  # the copy prompts' passages: fixed before any model saw them
COPY_STAGES = (  # the fine-tunes on copy_corpus, each from the run before: (steps, documents, corpus seed,
    # passage quoted up to N times, overrides[, share of copy documents, default a half])
    # One stage from the base, dense in copying: four fifths of the documents quote a fresh passage
    # 2-6 times (most of their tokens predictable only by copying: induction heads form on repeated
    # random sequences), packed one document a segment from position 0 as a prompt is read, rows of
    # 128 (every position a prompt and its reply reach; 12 rows keep a step's tokens), at the rate
    # the earlier recipe copied best at, decaying linearly (the copy gap widened most in a decay).
    (350, 10000, 5, 6, ["data.packing=true", "data.seq_len=128", "train.batch_size=12",
                        "train.learning_rate=2e-3", "train.schedule=linear"], 0.8),
    # the copy gap was still widening when that rate ran out: more fresh passages, the same mix,
    # from a lower rate
    (300, 10000, 6, 6, ["data.packing=true", "data.seq_len=128", "train.batch_size=12",
                        "train.learning_rate=1e-3", "train.schedule=linear"], 0.8),
)


def train_gpt(workdir: str) -> str:
    from nety_jax.config import load_config
    from nety_jax.training.loop import train
    train(load_config(os.path.join(ROOT, "configs", "gpt_tiny.yaml"), ["train.steps=300"]), workdir,
          progress=False, log=lambda *_: None)
    return workdir


def _shipped() -> tuple[list[str], list[str]]:
    """The shipped text's lines and its distinct words (punctuation stripped), in a fixed order."""
    from nety_jax.data.text import default_text_path
    with open(default_text_path(), encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    words = sorted({w.strip(PUNCTUATION) for line in lines for w in line.split()} - {""})
    return lines, words


def base_corpus(path: str, documents: int = COPY_DOCUMENTS, seed: int = 0) -> str:
    """The base run's training text (stage 1): one document a line, 1-3 lines of the shipped text
    drawn at random, and in half the documents the same passage again, verbatim. The model learns
    French from it, but memorises the 780 lines instead of learning to copy (``copy_corpus``)."""
    import random
    lines, _ = _shipped()
    rng = random.Random(seed)
    docs = []
    for _ in range(documents):
        n = rng.choice([1, 2, 3])
        rng.randrange(len(lines) - n)  # unused; kept so that the corpus is the one the documented run had
        passage = " ".join(rng.sample(lines, n))
        docs.append(f"{passage} {passage}" if rng.random() < 0.5 else passage)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(docs) + "\n")
    return path


def random_passage(rng, words: list[str], low: int, high: int) -> str:
    """low..high words of the shipped vocabulary drawn independently: a passage no training
    text holds, so that only copying it from the context predicts its second occurrence."""
    drawn = [rng.choice(words) for _ in range(rng.randint(low, high))]
    return " ".join([drawn[0][:1].upper() + drawn[0][1:]] + drawn[1:]) + "."


def copy_corpus(path: str, documents: int = COPY_DOCUMENTS, seed: int = 1, quotes: int = 2,
                copy_share: float = 0.5) -> str:
    """The copy GPT's fine-tuning text (stage 2), one document a line. Half the documents are
    natural (1-3 shipped lines, not repeated: the language stays learned; ``copy_share``: the share
    of the others); the other half quote an
    unmemorisable passage (``random_passage``, 4-14 words) twice, in half of them with a shipped
    line between the first two (a summary, an edit or a chat history quoting its context), as
    induction-head studies train copying on repeated random sequences; ``quotes`` > 2: the passage
    occurs 2 to ``quotes`` times (more of the text rewards copying)."""
    import random
    lines, words = _shipped()
    rng = random.Random(seed)
    docs = []
    for _ in range(documents):
        if rng.random() < 1.0 - copy_share:
            docs.append(" ".join(rng.sample(lines, rng.choice([1, 2, 3]))))
            continue
        passage = random_passage(rng, words, 4, 14)
        between = [rng.choice(lines)] if rng.random() < 0.5 else []
        again = [passage] * (rng.randint(1, quotes - 1) if quotes > 2 else 1)
        docs.append(" ".join([passage, *between, *again]))
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(docs) + "\n")
    return path


def copy_prompts(count: int = 4, seed: int = PROMPT_SEED) -> list[str]:
    """The copy GPT's repeating prompts: a passage of 8-12 random shipped words no training
    document holds (another seed than the corpus'), in every other prompt a shipped line after it,
    then its first two words again; the reply should go on quoting it. Fixed by the seed, not
    chosen by looking at the model's replies."""
    import random
    lines, words = _shipped()
    rng = random.Random(seed)
    prompts = []
    for i in range(count):
        passage = random_passage(rng, words, 8, 12)
        between = [rng.choice(lines)] if i % 2 == 0 else []
        prompts.append(" ".join([passage, *between, *passage.split()[:2]]))
    return prompts


def seen_passages(prompts: list[str], texts: list[str]) -> list[str]:
    """The prompts whose quoted passage (up to its first full stop: the text before the second
    occurrence of the prompt's first two words) is in one of ``texts``: the bench needs none, or
    it measures recall of training text, not copying."""
    seen = []
    for prompt in prompts:
        head = " ".join(prompt.split()[:2])
        again = prompt.find(" " + head, 1)
        passage = (prompt[:again] if again > 0 else prompt).split(".")[0]
        if any(passage in text for text in texts):
            seen.append(prompt)
    return seen


PROMPTS["copy"] = {"repeats": copy_prompts(), **PROMPTS["copy"]}


def _corpus_path(workdir: str) -> str:
    """Beside the run, not in it: train writes only into an empty directory or a run."""
    os.makedirs(os.path.dirname(os.path.abspath(workdir)), exist_ok=True)
    return os.path.abspath(workdir).rstrip(os.sep) + "-corpus.txt"


def _finished(workdir: str, steps: int) -> bool:
    from nety_jax.runs.checkpoints import latest_step
    return (latest_step(workdir) or 0) >= steps


def unfinished_copy(workdir: str):
    """Why ``workdir`` cannot be timed as the copy GPT (not a run, or short of its own
    ``train.steps``), or None. Timing never trains it: that takes hours (``--prepare``)."""
    import yaml
    try:
        with open(os.path.join(workdir, "config.yaml"), encoding="utf-8") as f:
            steps = int(yaml.safe_load(f)["train"]["steps"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return f"{workdir}: not a trained run (no readable config.yaml)"
    if not _finished(workdir, steps):
        from nety_jax.runs.checkpoints import latest_step
        return f"{workdir}: at step {latest_step(workdir) or 0} of {steps}, still training or stopped"
    return None


def train_base(workdir: str) -> str:
    """Stage 1 in ``workdir``: configs/gpt_copy_bench.yaml from scratch on ``base_corpus``
    (reused when finished there)."""
    from nety_jax.config import load_config
    from nety_jax.training.loop import train
    cfg = load_config(COPY_CONFIG)
    corpus = _corpus_path(workdir)
    if not os.path.exists(corpus):
        base_corpus(corpus)
    start = time.perf_counter()
    summary = train(cfg, workdir, data=corpus, progress=False, log=lambda *_: None)
    if summary["start_step"] < cfg.train.steps:
        print(f"trained the copy GPT's base in {workdir}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return workdir


def copy_stage_runs(workdir: str) -> list[str]:
    """The fine-tunes' run directories: ``workdir-1``, ... then ``workdir`` itself, the copy GPT."""
    return [f"{workdir.rstrip(os.sep)}-{i + 1}" for i in range(len(COPY_STAGES) - 1)] + [workdir]


def train_copy(workdir: str, base: str) -> str:
    """The copy GPT in ``workdir`` (reused when finished there): the base run in ``base``
    (``train_base``), then each of ``COPY_STAGES`` from the run before it (``train --init-from``:
    its weights and tokenizer) on a ``copy_corpus`` of its own (``copy_stage_runs``). Only the
    stages after the latest finished one are trained: a finished stage's run is all the next needs."""
    runs = copy_stage_runs(workdir)
    done = [i for i, (run, stage) in enumerate(zip(runs, COPY_STAGES)) if _finished(run, stage[0])]
    start = done[-1] + 1 if done else 0
    previous = runs[start - 1] if start else (train_base(base) if start < len(runs) else None)
    for run, (steps, documents, seed, quotes, overrides, *share) in zip(runs[start:], COPY_STAGES[start:]):
        corpus = copy_corpus(_corpus_path(run), documents, seed, quotes, *share)
        _fine_tune(previous, run, steps, corpus, overrides)
        previous = run
    return workdir


def _fine_tune(source_run: str, workdir: str, steps: int, corpus: str, overrides: list) -> None:
    from nety_jax.training.init_from import finetune_config, load_source
    from nety_jax.training.loop import train
    source = load_source(source_run)
    cfg = finetune_config(source, COPY_CONFIG, [f"train.steps={steps}", "train.warmup_steps=20",
                                                "train.checkpoint_every=50", "train.eval_every=50", *overrides])
    start = time.perf_counter()
    train(cfg, workdir, data=corpus, progress=False, log=lambda *_: None, init_from=source)
    print(f"fine-tuned {workdir} from {source_run}: {time.perf_counter() - start:.0f} s", file=sys.stderr)


def copy_losses(pretrained, count: int = 16, seed: int = PROMPT_SEED + 1) -> dict:
    """Mean loss (nats a token) of ``count`` unseen random passages shown twice, on their first
    and on their second occurrence: a model that copies its context predicts the second far
    better than the first (one that only knows the language predicts both alike)."""
    import random
    import numpy as np
    _, words = _shipped()
    rng = random.Random(seed)
    first = second = 0.0
    for _ in range(count):
        ids = pretrained.tokenizer.encode(random_passage(rng, words, 8, 12))
        tokens = np.asarray([ids + ids], np.int32)
        logits = pretrained.logits({"tokens": tokens})[0].astype(np.float64)
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - logits.max(-1, keepdims=True)
        nll = -logp[np.arange(tokens.shape[1] - 1), tokens[0, 1:]]
        n = len(ids)
        first += nll[:n - 1].mean() / count
        second += nll[n:].mean() / count  # the second occurrence less its first token
    return {"first_occurrence_loss": float(first), "second_occurrence_loss": float(second)}


def _instrumented(model, spec):
    """The speculative loop, returning its model calls and kept drafts too."""
    import jax
    from nety_jax.decoding import speculative
    from nety_jax.decoding.generation import _callbacks, _verify_callbacks

    @jax.jit
    def run(variables, tokens, lengths, params):
        first, cache, step = _callbacks(model, variables, tokens, lengths, spec)
        state = speculative.start(first, cache, tokens, lengths, params, spec)
        state = speculative.run(*_verify_callbacks(model, variables), state, spec, step=step)
        return state.calls + 1, state.accepted.sum(), state.drafted.sum()  # + the prefill
    return run


def measure(pretrained, prompts: list[str], new_tokens: int, draft: int, rounds: int) -> dict:
    """Each prompt alone through the compiled generate function, plain and speculating, rounds
    alternating; the sum over prompts of each one's median seconds."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from nety_jax.decoding import generate_jit
    settings = {"temperature": 0.0, "max_new_tokens": new_tokens, "speculate": "ngram", "draft_tokens": draft}
    calls = {"plain": [], "ngram": []}
    kept = drafted = tokens_total = 0
    same = True
    for text in prompts:
        req, batch, params = pretrained._prepare([text], 0, 1, settings)
        specs = {"ngram": req.spec, "plain": dataclasses.replace(req.spec, speculate="none")}
        args = (pretrained.variables, jnp.asarray(batch.tokens), jnp.asarray(batch.lengths), params)
        call = {k: (lambda spec=spec: jax.block_until_ready(generate_jit(*args, model=pretrained.model, spec=spec)))
                for k, spec in specs.items()}
        outs = {k: call[k]() for k in call}  # compiles
        same &= bool(np.array_equal(np.asarray(outs["plain"]["tokens"]), np.asarray(outs["ngram"]["tokens"])))
        n = int(outs["plain"]["lengths"][0])
        model_calls, k, d = (int(x) for x in _instrumented(pretrained.model, req.spec)(*args))
        tokens_total, kept, drafted = tokens_total + n, kept + k, drafted + d
        calls["plain"].append(n)
        calls["ngram"].append(model_calls)
        times = {"plain": [], "ngram": []}
        for r in range(rounds):
            for kind in (("plain", "ngram") if r % 2 == 0 else ("ngram", "plain")):
                start = time.perf_counter()
                call[kind]()
                times[kind].append(time.perf_counter() - start)
        for kind in times:
            calls.setdefault(kind + "_s", []).append(statistics.median(times[kind]))
    plain, spec = sum(calls["plain_s"]), sum(calls["ngram_s"])
    return {"tokens": tokens_total, "tokens_per_call": tokens_total / sum(calls["ngram"]),
            "kept": kept / max(drafted, 1), "plain_tok_s": tokens_total / plain, "ngram_tok_s": tokens_total / spec,
            "speedup": plain / spec, "identical": same}


COST_MODELS = {  # random weights: what a step costs does not depend on them
    "gpt tiny": ("gpt_tiny.yaml", []),
    "gpt copy": ("gpt_copy_bench.yaml", ["model.vocab_size=400"]),
    "gpt 124M": ("gpt2_124m.yaml", ["model.max_len=256", "model.dropout=0.0", "model.attention_dropout=0.0"]),
}


def _interleaved(calls: dict, rounds: int) -> dict:
    """Median seconds of each call, the calls alternating round by round (each compiled first)."""
    import jax
    times = {k: [] for k in calls}
    for f in calls.values():
        jax.block_until_ready(f())
    for r in range(rounds):
        for k in (list(calls) if r % 2 == 0 else list(calls)[::-1]):
            start = time.perf_counter()
            jax.block_until_ready(calls[k]())
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def step_costs(config: str, overrides: list, draft: int, rounds: int, new_tokens: int = 32) -> dict:
    """A random-weight model at batch 1: the seconds of one plain step (one token through
    ``decode_step``, greedy) against one verification (K+1 tokens through ``decode_steps``,
    greedy acceptance), and whole greedy replies plain and speculating, interleaved. The prompt is
    a random passage shown twice; a random model's greedy reply soon loops, which drafts predict."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from nety_jax.config import load_config
    from nety_jax.decoding import LoopSpec, SamplingParams, generate_jit, speculative
    from nety_jax.models import get_model
    model = get_model(load_config(os.path.join(ROOT, "configs", config), overrides).model)
    variables = model.init(jax.random.PRNGKey(0))
    passage = np.random.default_rng(0).integers(4, model.cfg.vocab_size, size=12)
    tokens = jnp.asarray(np.concatenate([passage, passage])[None], jnp.int32)
    lengths = jnp.asarray([tokens.shape[1]], jnp.int32)
    spec = LoopSpec(max_new_tokens=new_tokens, speculate="ngram", draft_tokens=draft, ignore_eos=True)
    first, cache = jax.jit(lambda v: model.start_decoding(v, tokens, lengths, new_tokens))(variables)
    cache = model.draft_room(cache, draft + 1)
    plain = jax.jit(lambda v, c: jnp.argmax(model.decode_step(v, tokens[:, -1], c)[0], axis=-1))
    fed = jnp.concatenate([tokens[:, -1:], tokens[:, :draft]], axis=1)
    verify = jax.jit(lambda v, c: speculative.accept_greedy(model.decode_steps(v, fed, c)[0], fed[:, 1:]))
    one = _interleaved({"plain": lambda: plain(variables, cache), "verify": lambda: verify(variables, cache)},
                       rounds)
    params = SamplingParams.create(1, temperature=0.0)
    run = lambda s: generate_jit(variables, tokens, lengths, params, model=model, spec=s)
    whole = _interleaved({"plain": lambda: run(dataclasses.replace(spec, speculate="none")),
                          "ngram": lambda: run(spec)}, rounds)
    same = bool(np.array_equal(np.asarray(run(spec)["tokens"]),
                               np.asarray(run(dataclasses.replace(spec, speculate="none"))["tokens"])))
    calls = _instrumented(model, spec)(variables, tokens, lengths, params)
    return {"plain_step_ms": one["plain"] * 1e3, "verify_ms": one["verify"] * 1e3,
            "verify_cost": one["verify"] / one["plain"], "tokens_per_call": new_tokens / int(calls[0]),
            "kept": int(calls[1]) / max(int(calls[2]), 1), "speedup": whole["plain"] / whole["ngram"],
            "identical": same}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--demo", default=os.path.join(ROOT, "runs", "demo"), help="the demo run (make demo)")
    p.add_argument("--gpt", metavar="RUN",
                   help="a trained GPT run, made by `nety-jax train --config configs/gpt_tiny.yaml --workdir RUN` "
                        "(its 300 steps on the shipped text; default: the same, trained into a temporary directory)")
    p.add_argument("--copy", metavar="RUN", default=os.path.join(ROOT, "runs", "bench-spec-induct"),
                   help="the copy GPT's run, made by --prepare (train_copy, from --copy-base); timing refuses "
                        "one that is not finished")
    p.add_argument("--copy-base", metavar="RUN", default=os.path.join(ROOT, "runs", "bench-spec-copy"),
                   help="the copy GPT's stage 1 (train_base): reused if trained, else trained there first")
    p.add_argument("--prepare", action="store_true", help="only make the copy GPT's run (--copy) and exit")
    p.add_argument("--draft-tokens", type=int, default=4)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--trained", default="gpt,demo,copy",
                   help="trained models to measure (gpt,demo,copy; '' for none)")
    p.add_argument("--costs", default=",".join(COST_MODELS),
                   help=f"random-weight models whose step costs to measure ({', '.join(COST_MODELS)}; '' for none)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--malloc", default="keep", choices=("keep", "keep-arenas", "default"),
                   help="glibc's malloc and JAX's CPU dispatch as `nety-jax` sets them (runtime.keep_host_memory: "
                        "'keep', the default) or left alone ('default')")
    args = p.parse_args()
    from nety_jax.runtime import keep_host_memory
    keep_host_memory(args.malloc)  # before JAX runs anything: `nety-jax generate --speculate` runs so
    if args.prepare:
        train_copy(args.copy, args.copy_base)
        return 0
    if "copy" in args.trained.split(",") and (why := unfinished_copy(args.copy)):
        print(f"bench_speculative.py: --copy {why}: make it first with --prepare (hours on a loaded CPU)",
              file=sys.stderr)
        return 2
    rows = trained_rows(args)
    costs = []
    for name in filter(None, args.costs.split(",")):
        costs.append({"model": name, **step_costs(*COST_MODELS[name], args.draft_tokens, args.rounds)})
        print(json.dumps(costs[-1]), file=sys.stderr, flush=True)
    if rows:
        print("| model | the reply repeats the prompt? | tokens | tokens per model call | drafts kept | "
              "plain tok/s | ngram tok/s | speed-up | same replies |")
        print("|---|---|---|---|---|---|---|---|---|")
    for r in (r for r in rows if "tokens" in r):
        print(f"| {r['model']} | {r['prompts']} | {r['tokens']} | {r['tokens_per_call']:.2f} | {r['kept']:.0%} | "
              f"{r['plain_tok_s']:.0f} | {r['ngram_tok_s']:.0f} | {r['speedup']:.2f}x | {r['identical']} |")
    for r in (r for r in rows if "second_occurrence_loss" in r):
        print(f"{r['model']}: unseen passages shown twice, loss {r['first_occurrence_loss']:.2f} nats a token on "
              f"the first occurrence, {r['second_occurrence_loss']:.2f} on the second")
    if costs:
        print("| model (random weights) | plain step | verification (K+1 tokens) | its cost in plain steps | "
              "tokens per model call | drafts kept | speed-up | same replies |")
        print("|---|---|---|---|---|---|---|---|")
    for r in costs:
        print(f"| {r['model']} | {r['plain_step_ms']:.2f} ms | {r['verify_ms']:.2f} ms | {r['verify_cost']:.2f} | "
              f"{r['tokens_per_call']:.2f} | {r['kept']:.0%} | {r['speedup']:.2f}x | {r['identical']} |")
    result = {"draft_tokens": args.draft_tokens, "rounds": args.rounds, "rows": rows, "costs": costs,
              "load_average": os.getloadavg()}
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


def trained_rows(args) -> list:
    """The table of the trained models (``--trained``)."""
    from nety_jax.serving.pretrained import load_pretrained
    wanted = [n for n in args.trained.split(",") if n]
    runs = {}
    if "gpt" in wanted:
        runs["gpt"] = (args.gpt or train_gpt(tempfile.mkdtemp(prefix="bench-spec-gpt-")), 32)
    if "demo" in wanted:
        runs["demo"] = (args.demo, 40)
    if "copy" in wanted:
        runs["copy"] = (args.copy, 48)  # finished (main checked): made by --prepare, never here
    rows = []
    for name, (path, new_tokens) in runs.items():
        model = load_pretrained(path, warn=lambda *_: None)
        if name == "copy":
            rows.append({"model": name, "prompts": "copy check", **copy_losses(model)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        for kind, prompts in PROMPTS[name].items():
            res = measure(model, prompts, new_tokens, args.draft_tokens, args.rounds)
            rows.append({"model": name, "prompts": kind, **res})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
