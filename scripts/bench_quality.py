"""Learning quality, measured: synthetic tasks, held-out-template dialogue, ablations.

    python scripts/bench_quality.py [--quick] [--no-doc]      (make bench-quality)

1. Copy / reverse / sort of random symbol strings (nety_jax.data.synthetic): trained on
   lengths 4-40, tested on unseen strings of lengths 4-40 and on unseen lengths 41-48; greedy
   exact match and token accuracy by length bucket for five encoder/memory variants, same
   steps for all; learning curves (reverse) plotted to docs/quality_curves.png.
2. Dialogue on the embedded corpus with whole templates held out: bits per character of the
   held-out replies, case-insensitive BLEU / chrF of greedy replies and samples, for NETY's
   recipe (PyTorch re-creation), the parity architecture with our training, and our defaults,
   NETY given at least the wall-clock our runs took.
3. Ablations: each of our changes switched off from the defaults, 3 seeds (trained as one
   vmapped program), on reverse exact match and held-out bits per character.

Prints Markdown tables, writes quality-results.json in the working directory and (unless
--no-doc) the results section of docs/QUALITY.md.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import random
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quality_lib as Q  # noqa: E402

from nety_jax.data import synthetic  # noqa: E402
from nety_jax.data.pairs import default_corpus_path  # noqa: E402

SYNTH = ["data.tokenizer=word", "data.vocab_size=64", "data.max_src_len=50", "data.max_tgt_len=50",
         "model.max_len=64", "model.d_model=64", "model.enc_hidden=64", "model.enc_layers=1",
         "model.enc_heads=4", "model.head_dims=[64]", "model.dec_layers=2", "model.dec_heads=4",
         "model.d_ff=256", "model.dropout=0.0", "model.attention_dropout=0.0",
         "train.batch_size=64", "train.learning_rate=3e-3", "train.warmup_steps=50",
         "train.label_smoothing=0.1",  # the synthetic recipe's (the dialogue default, 0.3, is for held-out text)
         "data.bucket_multiple=16", "data.subword_alpha=0.0",  # symbols: no SentencePiece
         "model.copy=false",  # the encoder-decoder alone: a pointer would make copy and reverse a lookup
         "decode.max_new_tokens=50"]
PARITY = ["model.enc_attention_mask=false", "model.enc_attention_residual=false",
          "model.pooling=last_padded", "model.memory=pooled", "model.copy=false"]
VARIANTS = {"parity (NETY's encoder, pooled memory)": PARITY,
            "defaults, pooled memory": ["model.memory=pooled"],
            "defaults, sequence memory": [],
            "defaults, GRU": ["model.cell=gru"],
            "defaults, unidirectional": ["model.bidirectional=false"]}
ABLATIONS = {"defaults": [],
             "no pad mask": ["model.enc_attention_mask=false"],
             "no attention residual": ["model.enc_attention_residual=false"],
             "NETY's pooling (last padded)": ["model.pooling=last_padded"],
             "pooled memory": ["model.memory=pooled", "model.copy=false"],
             "pre-norm (default post)": ["model.norm=pre"],
             "no label smoothing (0.1 synthetic, 0.3 dialogue)": ["train.label_smoothing=0.0"],
             "constant schedule": ["train.schedule=constant"],
             "tokenizer 1000 pieces (default 2400)": ["data.vocab_size=1000"],
             "no BPE-dropout (default 0.1)": ["data.subword_alpha=0"],
             "no copy (pointer-generator)": ["model.copy=false"]}
DIALOGUE_ONLY = ("data.", "model.copy=")  # the synthetic recipe has no tokenizer and no pointer
# (c') in the dialogue table: the defaults before this comparison (unigram tokenizer, which stops
# at 728 pieces on this corpus, no BPE-dropout, no pointer)
EARLIER = ["data.spm_model_type=unigram", "data.vocab_size=1000", "data.subword_alpha=0", "model.copy=false"]
BUCKETS = [(4, 13), (14, 22), (23, 31), (32, 40), (41, 48)]
DIALOGUE = ["train.warmup_steps=30", "data.bucket_multiple=32", "train.eval_every=100000", "decode.max_new_tokens=64",
            "data.max_src_len=48", "data.max_tgt_len=96",  # nothing cut, with the 400-piece tokenizer too
            "data.subword_alpha=0.1"]  # base.yaml's BPE-dropout (demo.yaml turns it off to recall its templates)


class Budget:
    def __init__(self, quick: bool):
        self.quick = quick
        self.synth_steps = 60 if quick else 250  # the variants table (three tasks side by side)
        self.headline_steps = 60 if quick else 2500  # reverse: defaults and parity
        self.synth_train = 4000 if quick else 40000
        self.synth_test = 64 if quick else 192
        self.dialogue_steps = 60 if quick else 400
        self.ablation_synth_steps = 60 if quick else 250
        self.ablation_dialogue_steps = 40 if quick else 80
        self.ablation_lengths = (4, 12)  # ablation reverse: short strings, learnt in a few hundred steps
        self.seeds = [0, 1] if quick else [0, 1, 2]


# 1. synthetic tasks -------------------------------------------------------------------------------

def by_bucket(preds, refs) -> dict:
    out = {}
    for lo, hi in BUCKETS:
        rows = [(p, r) for p, r in zip(preds, refs) if lo <= len(r.split()) <= hi]
        if rows:
            p, r = zip(*rows)
            out[f"{lo}-{hi}"] = {"exact": synthetic.exact_match(p, r), "token": synthetic.token_accuracy(p, r)}
    return out


def synthetic_data(b: Budget, lengths=(4, 40), longer=(41, 48)) -> dict:
    """The three tasks on ONE draw of strings (same seed): equal lengths row by row, so the
    tasks train side by side as one vmapped program."""
    return {t: synthetic.split(t, b.synth_train, b.synth_test, lengths, longer, seed=7) for t in synthetic.TASKS}


def synthetic_scores(run, m: int, data: dict) -> dict:
    test = data["test"] + data.get("longer", [])
    preds, refs, n = Q.greedy(run, m, [s for s, _ in test]), [t for _, t in test], len(data["test"])
    return {"buckets": by_bucket(preds, refs),
            "exact_4_40": synthetic.exact_match(preds[:n], refs[:n]),
            "token_4_40": synthetic.token_accuracy(preds[:n], refs[:n]),
            "exact_41_48": synthetic.exact_match(preds[n:], refs[n:])}


def synthetic_run(overrides: list[str], b: Budget, steps: int, tasks, seeds, curve: bool = False,
                  lengths=(4, 40), longer=(41, 48)):
    """One model per task (same seed) or, for one task, one model per seed; all vmapped."""
    data = synthetic_data(b, lengths, longer)
    per_task = len(tasks) > 1
    sets = [data[t]["train"] for t in tasks] if per_task else data[tasks[0]]["train"]
    seeds = [seeds[0]] * len(tasks) if per_task else seeds
    task_of = lambda m: tasks[m] if per_task else tasks[0]
    probe = lambda run: [synthetic.exact_match(Q.greedy(run, m, [s for s, _ in data[task_of(m)]["test"][:64]]),
                                               [t for _, t in data[task_of(m)]["test"][:64]])
                         for m in range(len(seeds))]
    cfg = Q.config("demo.yaml", SYNTH + overrides + [f"train.steps={steps}"])
    run = Q.train_seeds(cfg, sets, seeds, probe=probe if curve else None, probe_every=max(steps // 8, 1))
    return run, [synthetic_scores(run, m, data[task_of(m)]) for m in range(len(seeds))]


def synthetic_tables(b: Budget, log, variants: bool = True) -> dict:
    out = {task: {} for task in synthetic.TASKS} if variants else {}
    for name, overrides in VARIANTS.items() if variants else ():
        run, res = synthetic_run(overrides, b, b.synth_steps, synthetic.TASKS, [0], curve=True)
        for m, task in enumerate(synthetic.TASKS):
            out[task][name] = {**res[m], "seconds": run.seconds,
                               "curve": [(step, v[m]) for step, v in run.curve]}
            log(f"{task:<8} {name:<40} exact {res[m]['exact_4_40']:.3f} (41-48: "
                f"{res[m]['exact_41_48']:.3f})")
        log(f"{name}: three tasks trained side by side in {run.seconds:.0f} s")
    for name in ("defaults, sequence memory", "parity (NETY's encoder, pooled memory)"):
        run, res = synthetic_run(VARIANTS[name], b, b.headline_steps, ["reverse"], [0], curve=True)
        out.setdefault("reverse_long", {})[name] = {**res[0], "seconds": run.seconds,
                                                    "curve": [(step, v[0]) for step, v in run.curve]}
        log(f"reverse, {b.headline_steps} steps, {name}: exact {res[0]['exact_4_40']:.3f} "
            f"(41-48: {res[0]['exact_41_48']:.3f}) in {run.seconds:.0f} s")
    return out


# 2. dialogue with held-out templates -------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def pairs_by_template() -> dict[str, list]:
    """The embedded corpus's pairs grouped by the template that made them (read once; do not mutate)."""
    by_t: dict[str, list] = {}
    with open(default_corpus_path(), encoding="utf-8") as f:
        for r in map(json.loads, f):
            by_t.setdefault(r["template"], []).append((r["input"], r["target"]))
    return by_t


def template_split(seed: int = 0, held_out: int = 16, per_template: int = 12, added: bool = True,
                   fraction: float = 1.0):
    """Train pairs and test pairs with no template in common. Held-out templates are drawn from
    those with at most 100 pairs (the big ones stay: they are most of the corpus) and never
    from the templates added later to enrich the corpus ("added..."), so the test set is the
    same with them and without them (``added=False`` trains without them); each held-out
    template gives at most ``per_template`` test pairs, the rest of its pairs are left out.
    ``fraction`` < 1 trains on that share of the training templates only (nested subsets: a
    fixed shuffle of their names, cut), the test set unchanged."""
    by_t = pairs_by_template()
    rng = random.Random(seed)
    small = sorted(t for t, p in by_t.items() if len(p) <= 100 and not t.startswith("added"))
    test_t = set(rng.sample(small, held_out))
    kept = sorted(t for t in by_t if t not in test_t and (added or not t.startswith("added")))
    random.Random(seed + 1).shuffle(kept)
    kept = set(kept[: max(1, round(fraction * len(kept)))])
    train = [p for t, ps in by_t.items() if t in kept for p in ps]
    test = [p for t in sorted(test_t) for p in rng.sample(sorted(by_t[t]), min(per_template, len(by_t[t])))]
    rng.shuffle(train)
    return train, test, sorted(test_t)


def score_ours(run, test, i: int = 0) -> dict:
    hyps = Q.greedy(run, i, [s for s, _ in test])
    refs = [t for _, t in test]
    return {"bpc": Q.bits_per_char(Q.nll_nats(run, i, test), refs), **Q.text_scores(hyps, refs),
            "samples": list(zip([s for s, _ in test], hyps))}


def dialogue_tables(b: Budget, log, leak: bool = False, earlier: bool = False, added: bool = True,
                    lowercase: bool = False) -> dict:
    train, test, templates = template_split(added=added)
    log(f"dialogue: {len(train)} training pairs, {len(test)} test pairs from {len(templates)} "
        f"held-out templates")
    out = {"train_pairs": len(train), "test_pairs": len(test), "held_out_templates": templates}
    steps = [f"train.steps={b.dialogue_steps}"]
    recipes = [("ours", DIALOGUE + steps), ("parity_our_training", DIALOGUE + steps + PARITY)]
    recipes += [("ours_earlier", DIALOGUE + steps + EARLIER)] if earlier else []
    # (c'') NETY's recipe lowercases everything and is scored on lowercased replies: ours on the same text
    recipes += [("ours_lowercase", DIALOGUE + steps + ["data.lowercase=true"])] if lowercase else []
    for key, overrides in recipes:
        run = Q.train_seeds(Q.config("demo.yaml", overrides), train, [0])
        out[key] = {**score_ours(run, test), "seconds": run.seconds, "steps": b.dialogue_steps}
        log(f"{key}: bpc {out[key]['bpc']:.3f} chrF {out[key]['chrf']:.1f} in {run.seconds:.0f} s")
    budget = max(out[k]["seconds"] for k, _ in recipes)
    # (a) the training texts make NETY's vocabulary, as NETY builds it from its corpus; (a')
    # the earlier protocol: test replies in the vocabulary too (a leak: it never meets an
    # unknown word), kept to show what it was worth
    for key, texts in (("nety", train), ("nety_test_words_in_vocab", train + test))[: 2 if leak else 1]:
        out[key] = nety_recipe(train, test, budget, [t for p in texts for t in p])
        log(f"{key}: bpc {out[key]['bpc']:.3f} chrF {out[key]['chrf']:.1f} ({out[key]['steps']} steps "
            f"in {out[key]['seconds']:.0f} s; {out[key]['unknown_words']} unknown test words)")
    return out


def nety_recipe(train, test, seconds: float, vocabulary_texts: list[str]) -> dict:
    """NETY's recipe for ``seconds``; its vocabulary is every word of ``vocabulary_texts``.
    bits per character charge each unknown test word p(<unk>) and its spelling."""
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    m = Q.config("demo.yaml", []).model
    dims = dict(d_model=m.d_model, hidden=m.enc_hidden, layers=m.enc_layers, enc_heads=m.enc_heads,
                dec_heads=m.dec_heads, dec_layers=m.dec_layers, d_ff=m.d_ff, dropout=0.1, max_len=m.max_len)
    recipe = Q.NetyRecipe(vocabulary_texts, dims)
    spent = recipe.train(train, seconds)
    refs = [t for _, t in test]
    hyps = recipe.greedy([s for s, _ in test])
    spelling = Q.SpellingModel(w for p in train for t in p for w in recipe.tokenizer.words(t))
    return {"bpc": Q.bits_per_char(recipe.open_vocab_nats(test, spelling), refs),
            "unknown_words": len(recipe.unknown_words(refs)),
            "test_words": sum(len(recipe.tokenizer.words(t)) for t in refs),
            **Q.text_scores(hyps, refs),
            "samples": list(zip([s for s, _ in test], hyps)), "seconds": spent, "steps": recipe.steps}


# 3. ablations ------------------------------------------------------------------------------------

def ablation_table(b: Budget, log) -> dict:
    train, test, _ = template_split()
    out = {}
    for name, overrides in ABLATIONS.items():
        row = {}
        if not overrides or not overrides[0].startswith(DIALOGUE_ONLY):
            _, res = synthetic_run(overrides, b, b.ablation_synth_steps, ["reverse"], b.seeds,
                                   lengths=b.ablation_lengths, longer=None)
            row["reverse_exact"] = [r["exact_4_40"] for r in res]
            row["reverse_token"] = [r["token_4_40"] for r in res]
        cfg = Q.config("demo.yaml", DIALOGUE + overrides + [f"train.steps={b.ablation_dialogue_steps}"])
        run = Q.train_seeds(cfg, train, b.seeds)
        refs = [t for _, t in test]
        row["bpc"] = [Q.bits_per_char(Q.nll_nats(run, i, test), refs) for i in range(len(b.seeds))]
        out[name] = row
        log(f"ablation {name:<32} " + "  ".join(f"{k} {np.mean(v):.3f}±{np.std(v):.3f}" for k, v in row.items()))
    return out


def sweep_table(b: Budget, setting: str, log, fixed: list[str] = ()) -> list[str]:
    """Held-out bits per character and greedy chrF for each value of one setting
    (``KEY=V1,V2,...``, on top of the ``fixed`` overrides), the dialogue budget of the main
    table, 3 seeds: how a default was chosen, reproducibly."""
    key, _, values = setting.partition("=")
    if not key or not values:
        raise SystemExit(f"--sweep: expected KEY=V1,V2,... (e.g. train.label_smoothing=0.1,0.3), got {setting!r}")
    train, test, _ = template_split()
    refs = [t for _, t in test]
    lines = [f"Held-out bits per character by `{key}` ({b.dialogue_steps} steps, seeds {b.seeds}"
             + (f", with {' '.join(fixed)}" if fixed else "") + "):", "",
             f"| {key} | pieces | held-out bits/char | chrF |", "|---|---|---|---|"]
    for value in values.split(","):
        cfg = Q.config("demo.yaml", DIALOGUE + list(fixed) + [f"{key}={value}", f"train.steps={b.dialogue_steps}"])
        run = Q.train_seeds(cfg, train, b.seeds)
        bpc = [Q.bits_per_char(Q.nll_nats(run, i, test), refs) for i in range(len(b.seeds))]
        chrf = [Q.text_scores(Q.greedy(run, i, [s for s, _ in test]), refs)["chrf"] for i in range(len(b.seeds))]
        lines.append(f"| {value} | {run.tokenizer.vocab_size} | {mean_sd(bpc)} | {mean_sd(chrf)} |")
        log(f"{key}={value}: {run.tokenizer.vocab_size} pieces, bits/char {mean_sd(bpc)}, chrF {mean_sd(chrf)}")
    return lines + [""]


def corpus_effect(b: Budget, log) -> list[str]:
    """What the added templates are worth: NETY's recipe and our defaults trained with and
    without them (the same held-out test set, the same budgets as the dialogue table)."""
    rows = {added: dialogue_tables(b, log, added=added) for added in (False, True)}
    lines = ["Held-out templates, trained without and with the added templates "
             f"({rows[False]['train_pairs']} vs {rows[True]['train_pairs']} training pairs; "
             f"the same {rows[True]['test_pairs']} test pairs):", "",
             "| training pairs | NETY bits/char | ours bits/char | ratio | NETY chrF | ours chrF | "
             "unknown test words (NETY) |", "|---|---|---|---|---|---|---|"]
    for added, d in rows.items():
        lines.append(f"| {'with' if added else 'without'} the added templates ({d['train_pairs']}) | "
                     f"{d['nety']['bpc']:.3f} | {d['ours']['bpc']:.3f} | {d['ours']['bpc'] / d['nety']['bpc']:.3f} | "
                     f"{d['nety']['chrf']:.1f} | {d['ours']['chrf']:.1f} | {d['nety']['unknown_words']} |")
    return lines + [""]


def data_scaling(b: Budget, log, fractions: str) -> list[str]:
    """The dialogue table's (a) and (c) trained on nested shares of the training templates,
    scored on the same held-out test set: how the ratio moves with the amount of text."""
    try:
        shares = [float(f) for f in fractions.split(",")]
    except ValueError:
        raise SystemExit(f"--data-fraction: expected fractions like 0.25,0.5,1, got {fractions!r}") from None
    if not shares or any(not 0 < f <= 1 for f in shares):
        raise SystemExit(f"--data-fraction: every fraction must be in (0, 1], got {fractions!r}")
    lines = ["Held-out bits per character with a share of the training templates (the same "
             f"held-out test pairs; {b.dialogue_steps} steps for ours, NETY's recipe for as long):", "",
             "| share of templates | templates | training pairs | unknown test words (NETY) | "
             "NETY bits/char | ours bits/char | ratio | NETY chrF | ours chrF |",
             "|---|---|---|---|---|---|---|---|---|"]
    for share in shares:
        train, test, _ = template_split(fraction=share)
        run = Q.train_seeds(Q.config("demo.yaml", DIALOGUE + [f"train.steps={b.dialogue_steps}"]), train, [0])
        ours = score_ours(run, test)
        nety = nety_recipe(train, test, run.seconds, [t for p in train for t in p])
        kept = set(train)
        n_templates = sum(1 for ps in pairs_by_template().values() if kept.intersection(ps))
        lines.append(f"| {share:g} | {n_templates} | {len(train)} | {nety['unknown_words']} | {nety['bpc']:.3f} | "
                     f"{ours['bpc']:.3f} | {ours['bpc'] / nety['bpc']:.3f} | {nety['chrf']:.1f} | {ours['chrf']:.1f} |")
        log(f"share {share:g}: {len(train)} pairs from {n_templates} templates; ours {ours['bpc']:.3f}, "
            f"NETY {nety['bpc']:.3f}, ratio {ours['bpc'] / nety['bpc']:.3f}")
    return lines + [""]


# report ------------------------------------------------------------------------------------------

def mean_sd(values) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def synthetic_markdown(syn: dict, b: Budget) -> list[str]:
    lines = []
    for task, rows in syn.items():
        what = (f"**reverse, {b.headline_steps} steps**" if task == "reverse_long" else
                f"**{task}**, {b.synth_steps} steps (three tasks trained side by side: seconds are for all three)")
        lines += [f"{what}; batch 64; greedy exact match / token accuracy by length:", "",
                  "| variant | " + " | ".join(f"{lo}-{hi}" for lo, hi in BUCKETS) + " | exact 4-40 | seconds |",
                  "|---|" + "---|" * (len(BUCKETS) + 2)]
        for name, r in rows.items():
            cells = [f"{r['buckets'][k]['exact']:.2f} / {r['buckets'][k]['token']:.2f}"
                     if k in r["buckets"] else "-" for k in (f"{lo}-{hi}" for lo, hi in BUCKETS)]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | **{r['exact_4_40']:.3f}** | {r['seconds']:.0f} |")
        lines.append("")
    return lines


def dialogue_markdown(dia: dict) -> list[str]:
    names = {"nety": "(a) NETY's recipe (PyTorch: word vocab of the training text, Adam 1e-4, batch 4, pad 50)",
             "nety_test_words_in_vocab": "(a') the same with the test replies' words in its vocabulary (leak)",
             "parity_our_training": "(b) parity architecture, our training",
             "ours": "(c) our defaults (configs/demo.yaml's model, base.yaml's BPE-dropout 0.1)",
             "ours_earlier": "(c') the earlier defaults (unigram tokenizer, 728 pieces; no BPE-dropout, no pointer)",
             "ours_lowercase": "(c'') our defaults trained and scored on lowercased text, as NETY's recipe is"}
    lines = [f"{dia['train_pairs']} training pairs; {dia['test_pairs']} test pairs from "
             f"{len(dia['held_out_templates'])} templates never seen in training; "
             f"{dia['nety']['unknown_words']} of the {dia['nety']['test_words']} words of the test "
             "replies are not in NETY's training vocabulary (each charged p(<unk>) and its spelling "
             "under a character bigram model of the training words).", "",
             "| recipe | steps | seconds | bits/char | BLEU | chrF |", "|---|---|---|---|---|---|"]
    for key in ("nety", "nety_test_words_in_vocab", "parity_our_training", "ours", "ours_earlier", "ours_lowercase"):
        if key not in dia:
            continue
        r = dia[key]
        lines.append(f"| {names[key]} | {r['steps']} | {r['seconds']:.0f} | {r['bpc']:.3f} | "
                     f"{r['bleu']:.1f} | {r['chrf']:.1f} |")
    lines += ["", "Sample greedy replies to held-out prompts:", "",
              "| prompt | NETY's recipe | our defaults |", "|---|---|---|"]
    for (src, a), (_, c) in list(zip(dia["nety"]["samples"], dia["ours"]["samples"]))[::max(len(dia["ours"]["samples"]) // 8, 1)][:8]:
        cell = lambda s: s.replace("|", "\\|") or "(empty)"
        lines.append(f"| {cell(src)} | {cell(a)} | {cell(c)} |")
    return lines + [""]


def ablation_markdown(abl: dict, b: Budget) -> list[str]:
    lines = [f"Mean ± standard deviation over seeds {b.seeds}; reverse of strings of lengths "
             f"{b.ablation_lengths[0]}-{b.ablation_lengths[1]}: {b.ablation_synth_steps} steps, "
             f"dialogue: {b.ablation_dialogue_steps} steps (short budgets: they rank the changes).", "",
             "| from the defaults | reverse exact match | reverse token accuracy | held-out bits/char |",
             "|---|---|---|---|"]
    for name, row in abl.items():
        rev = [mean_sd(row[k]) if k in row else "- (dialogue only)" for k in ("reverse_exact", "reverse_token")]
        lines.append(f"| {name} | {rev[0]} | {rev[1]} | {mean_sd(row['bpc'])} |")
    return lines + [""]


def plot_curves(syn: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, style in (("reverse", "-"), ("reverse_long", "--")):
        for name, r in syn.get(key, {}).items():
            if r["curve"]:
                ax.plot(*zip(*r["curve"]), style, marker="o", markersize=3,
                        label=name + (" (long run)" if key == "reverse_long" else ""))
    ax.set_xlabel("step")
    ax.set_ylabel("greedy exact match, reverse (64 test strings)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary(syn, dia) -> dict:
    rev = syn["reverse_long"]
    return {"reverse_exact_match_default": rev["defaults, sequence memory"]["exact_4_40"],
            "reverse_exact_match_parity": rev["parity (NETY's encoder, pooled memory)"]["exact_4_40"],
            "reverse_exact_match_default_41_48": rev["defaults, sequence memory"]["exact_41_48"],
            "bpc_default": dia["ours"]["bpc"], "bpc_nety": dia["nety"]["bpc"],
            "bpc_ratio_vs_nety": dia["ours"]["bpc"] / dia["nety"]["bpc"],
            "chrf_default": dia["ours"]["chrf"], "chrf_nety": dia["nety"]["chrf"],
            "chrf_parity": dia["parity_our_training"]["chrf"],
            **({"bpc_earlier_defaults": dia["ours_earlier"]["bpc"], "chrf_earlier_defaults": dia["ours_earlier"]["chrf"],
                "bpc_ratio_vs_nety_earlier_defaults": dia["ours_earlier"]["bpc"] / dia["nety"]["bpc"]}
               if "ours_earlier" in dia else {}),
            **({"bpc_lowercase": dia["ours_lowercase"]["bpc"],
                "bpc_ratio_vs_nety_lowercase": dia["ours_lowercase"]["bpc"] / dia["nety"]["bpc"]}
               if "ours_lowercase" in dia else {}),
            **({"bpc_nety_test_words_in_vocab": dia["nety_test_words_in_vocab"]["bpc"],
                "bpc_ratio_vs_nety_test_words_in_vocab": dia["ours"]["bpc"] / dia["nety_test_words_in_vocab"]["bpc"]}
               if "nety_test_words_in_vocab" in dia else {})}


def write_doc(text: str, path: str) -> None:
    start, end = "<!-- bench_quality results -->", "<!-- end bench_quality results -->"
    old = open(path, encoding="utf-8").read() if os.path.exists(path) else "# Learning quality\n\n"
    block = f"{start}\n{text}\n{end}"
    if start in old and end in old:
        new = old[: old.index(start)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(new)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny budgets: checks the script, not the model")
    p.add_argument("--no-doc", action="store_true", help="do not write docs/QUALITY.md and the plot "
                   "(never written by --only runs)")
    p.add_argument("--only", choices=("synthetic", "reverse", "dialogue", "ablation"),
                   help="one part only (reverse: the two long reverse runs)")
    p.add_argument("--headline-steps", type=int, help="steps of the long reverse runs (default 2500)")
    p.add_argument("--nety-leak", action="store_true", help="also train NETY's recipe with the test "
                   "replies' words in its vocabulary (the earlier, leaky protocol; about a minute more)")
    p.add_argument("--earlier", action="store_true", help="also train the earlier defaults (unigram "
                   "tokenizer, no BPE-dropout, no pointer) in the dialogue table, as (c'); about a minute more")
    p.add_argument("--lowercase", action="store_true", help="also train our defaults on lowercased text "
                   "and score them on the lowercased replies, as NETY's recipe is, as (c''); about a minute more")
    p.add_argument("--sweep", metavar="KEY=V1,V2,...", help="only: held-out dialogue bits per character "
                   "for each value of one setting, 3 seeds (e.g. train.label_smoothing=0.1,0.2,0.3,0.5)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="with --sweep: another setting fixed for every value (repeatable)")
    p.add_argument("--data-fraction", metavar="F1,F2,...", help="only: NETY's recipe and our defaults "
                   "trained on nested shares of the training templates (e.g. 0.25,0.5,1), the same test "
                   "set; about 2.5 minutes a share")
    p.add_argument("--corpus-effect", action="store_true", help="only: the dialogue table trained with "
                   "and without the templates added to enrich the corpus, on the same test set (about 6 min)")
    return p


def main() -> int:
    args = _parser().parse_args()
    b, start = Budget(args.quick), time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - start:6.0f} s] {msg}", flush=True)
    if args.sweep:
        print("\n".join(sweep_table(b, args.sweep, log, args.overrides)))
        return 0
    if args.data_fraction:
        print("\n".join(data_scaling(b, log, args.data_fraction)))
        return 0
    if args.corpus_effect:
        print("\n".join(corpus_effect(b, log)))
        return 0
    if args.headline_steps:
        b.headline_steps = args.headline_steps
    syn = synthetic_tables(b, log, args.only != "reverse") if args.only in (None, "synthetic", "reverse") else None
    dia = dialogue_tables(b, log, args.nety_leak, args.earlier, lowercase=args.lowercase) if args.only in (None, "dialogue") else None
    abl = ablation_table(b, log) if args.only in (None, "ablation") else None
    when = datetime.date.today().isoformat()
    text = [f"Measured {when} on {platform.machine()} with {os.cpu_count()} CPU cores by "
            f"`python scripts/bench_quality.py{' --quick' if b.quick else ''}` "
            f"({time.perf_counter() - start:.0f} s in all).", ""]
    results = {"date": when, "quick": b.quick}
    if syn:
        text += ["### Synthetic tasks", ""] + synthetic_markdown(syn, b)
        results["synthetic"] = syn
    if dia:
        text += ["### Held-out-template dialogue", ""] + dialogue_markdown(dia)
        results["dialogue"] = dia
    if abl:
        text += ["### Ablations", ""] + ablation_markdown(abl, b)
        results["ablation"] = abl
    if syn and dia:
        results.update(summary(syn, dia))
        text += ["Summary: " + ", ".join(f"{k} = {v:.3f}" for k, v in summary(syn, dia).items()), ""]
    print("\n".join(text))
    with open("quality-results.json", "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, ensure_ascii=False)
    if not args.no_doc and args.only is None:  # a partial run never replaces the full report
        if syn:
            plot_curves(syn, os.path.join(Q.ROOT, "docs", "quality_curves.png"))
        write_doc("\n".join(text), os.path.join(Q.ROOT, "docs", "QUALITY.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
