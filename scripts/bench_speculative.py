"""Speculative decoding (prompt lookup) against plain decoding, at batch 1, in one run.

    python scripts/bench_speculative.py [--demo runs/demo] [--gpt RUN] [--draft-tokens 4]
                                        [--rounds 3] [--json FILE]

Two trained models: the demo (the hybrid of ``make demo``) and a GPT (configs/gpt_tiny.yaml;
one is trained briefly into a temporary directory when --gpt is not given). Two prompt sets
each: prompts whose reply repeats their text (the hybrid echoes names, places and objects of
its input; the GPT continues a passage it was just shown) and prompts whose reply does not.
Every prompt runs alone (batch 1) through ``Pretrained.generate_ids`` greedy, plain and with
``speculate=ngram``, alternating round by round (the machine is shared: only the ratio of the
two, measured in the same run, means anything); the medians of the rounds are compared.
The replies are checked identical. Prints a table and one JSON object.
"""
from __future__ import annotations

import argparse
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
                    "Mon ami Inès adore faire de la randonnée.", "Tu te souviens de moi ? Je suis Chloé.",
                    "Combien font cinq fois deux ?", "Je m'appelle Camille et j'habite à Montpellier."],
        "does not": ["Je me sens assez stressé aujourd'hui.", "Le vent souffle très fort",
                     "Je me sens assez perdu ce matin.", "Raconte-moi une blague.",
                     "Le week-end, j'aime lire.", "Merci beaucoup pour ton aide !"],
    },
    "gpt": {
        "repeats": ["Le vendredi, Thomas dîne chez ses amis. Le soir, Julien peint un tableau. "
                    "Le vendredi, Thomas dîne",
                    "Manon va à la pharmacie pour acheter des médicaments. Manon va à la pharmacie",
                    "Le lapin mange des carottes et dort dans son terrier. Le dimanche, le lapin mange",
                    "Chloé achète des pommes de terre et de la crème. Chloé achète des pommes"],
        "does not": ["Le vendredi,", "Souvent, le chat", "En automne, à Marseille,", "Léa va au marché"],
    },
}


def train_gpt(workdir: str) -> str:
    from nety_jax.config import load_config
    from nety_jax.training.loop import train
    train(load_config(os.path.join(ROOT, "configs", "gpt_tiny.yaml"), ["train.steps=300"]), workdir,
          progress=False, log=lambda *_: None)
    return workdir


def measure(model, prompts: list[str], new_tokens: int, draft: int, rounds: int) -> dict:
    """Median seconds of each prompt alone, plain and speculating, and the tokens generated."""
    import numpy as np
    kinds = {"plain": {"speculate": "none"}, "ngram": {"speculate": "ngram", "draft_tokens": draft}}
    times = {k: [] for k in kinds}
    outputs = {}
    for r in range(rounds + 1):  # round 0 compiles
        for kind, settings in (kinds.items() if r % 2 == 0 else reversed(list(kinds.items()))):
            total, outs = 0.0, []
            for text in prompts:
                start = time.perf_counter()
                out = model.generate_ids([text], temperature=0.0, max_new_tokens=new_tokens, **settings)
                total += time.perf_counter() - start
                outs.append(out["tokens"][0, : out["lengths"][0]])
            outputs[kind] = outs
            if r:
                times[kind].append(total)
    same = all(np.array_equal(a, b) for a, b in zip(outputs["plain"], outputs["ngram"]))
    tokens = int(sum(len(o) for o in outputs["plain"]))
    plain, spec = statistics.median(times["plain"]), statistics.median(times["ngram"])
    return {"tokens": tokens, "plain_tok_s": tokens / plain, "ngram_tok_s": tokens / spec,
            "speedup": plain / spec, "identical": same}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--demo", default=os.path.join(ROOT, "runs", "demo"), help="the demo run (make demo)")
    p.add_argument("--gpt", help="a trained GPT run (default: train configs/gpt_tiny.yaml briefly)")
    p.add_argument("--draft-tokens", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    from nety_jax.serving.pretrained import load_pretrained
    gpt = args.gpt or train_gpt(tempfile.mkdtemp(prefix="bench-spec-gpt-"))
    runs = {"demo": (args.demo, 40), "gpt": (gpt, 32)}
    rows = []
    for name, (path, new_tokens) in runs.items():
        model = load_pretrained(path, warn=lambda *_: None)
        for kind, prompts in PROMPTS[name].items():
            res = measure(model, prompts, new_tokens, args.draft_tokens, args.rounds)
            rows.append({"model": name, "prompts": kind, **res})
    print(f"| model | prompts (reply repeats them?) | tokens | plain tok/s | ngram tok/s | speed-up | same replies |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['prompts']} | {r['tokens']} | {r['plain_tok_s']:.0f} | "
              f"{r['ngram_tok_s']:.0f} | {r['speedup']:.2f}x | {r['identical']} |")
    result = {"draft_tokens": args.draft_tokens, "rounds": args.rounds, "rows": rows}
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
