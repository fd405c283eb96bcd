"""Versions of the speculative loop side by side, in ONE process, against plain decoding.

    python scripts/ab_speculative.py [--run runs/demo] [--prompts demo|gpt|"TEXT|TEXT"]
                                     [--rounds 150] [--new-tokens 40] REV [REV ...]

Each REV is a git revision (or a file path) whose ``nety_jax/decoding/speculative.py`` is loaded as
a module of its own; ``WORKTREE`` names the working tree's. Every version and plain decoding are
compiled for each prompt (greedy, batch 1), their replies compared token for token, then timed in
alternating rounds (the order reversed every other round) and the medians printed as plain /
version: a ratio below 1 is what speculating costs. One process and alternating calls take the
machine's drift out of a comparison of a few percent, which separate runs of
``bench_speculative.py`` cannot resolve (docs/PERFORMANCE.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

MODULE = "nety_jax/decoding/speculative.py"


def version_file(rev: str, workdir: str) -> str:
    """A file holding REV's speculative loop (a path as it is, WORKTREE the working tree's)."""
    if rev == "WORKTREE":
        return os.path.join(ROOT, MODULE)
    if os.path.isfile(rev):
        return rev
    text = subprocess.run(["git", "-C", ROOT, "show", f"{rev}:{MODULE}"], check=True, capture_output=True,
                          text=True).stdout
    path = os.path.join(workdir, f"speculative_{len(os.listdir(workdir))}.py")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def load(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("revs", nargs="+", metavar="REV")
    p.add_argument("--run", default=os.path.join(ROOT, "runs", "demo"))
    p.add_argument("--prompts", default="demo", help="demo or gpt (bench_speculative's prompts that do not "
                                                      "repeat), or texts separated by |")
    p.add_argument("--rounds", type=int, default=150)
    p.add_argument("--new-tokens", type=int, default=40)
    args = p.parse_args()
    from nety_jax.runtime import keep_host_memory
    keep_host_memory("keep")  # as `nety-jax` runs
    import jax
    import jax.numpy as jnp
    import numpy as np
    from bench_speculative import PROMPTS, _interleaved
    from nety_jax.decoding import generation
    from nety_jax.serving.pretrained import load_pretrained

    texts = PROMPTS[args.prompts]["does not"] if args.prompts in PROMPTS else args.prompts.split("|")
    with tempfile.TemporaryDirectory() as workdir:
        versions = {rev: load(version_file(rev, workdir), f"speculative_ab_{i}") for i, rev in enumerate(args.revs)}
    home = generation.speculative
    model = load_pretrained(args.run, warn=lambda *_: None)

    def compiled(module):
        def run(*a, spec):
            generation.speculative = module  # the generate function reads its loop from here at trace time
            try:
                return generation.generate(*a, model=model.model, spec=spec)
            finally:
                generation.speculative = home
        return jax.jit(run, static_argnames=("spec",))

    totals: dict = {}
    for text in texts:
        req, batch, params = model._prepare([text], 0, 1, {"temperature": 0.0, "max_new_tokens": args.new_tokens,
                                                           "speculate": "ngram", "draft_tokens": 4})
        arrays = (model.variables, jnp.asarray(batch.tokens), jnp.asarray(batch.lengths), params)
        arms = {"plain": (compiled(home), dataclasses.replace(req.spec, speculate="none"))}
        arms.update({rev: (compiled(module), req.spec) for rev, module in versions.items()})
        calls = {k: (lambda f=f, s=s: jax.block_until_ready(f(*arrays, spec=s))) for k, (f, s) in arms.items()}
        replies = {k: np.asarray(call()["tokens"]) for k, call in calls.items()}
        for k, reply in replies.items():
            if not np.array_equal(reply, replies["plain"]):
                print(f"ab_speculative.py: {k} replies differently from plain decoding to {text!r}", file=sys.stderr)
                return 1
        medians = _interleaved(calls, args.rounds)
        for k, v in medians.items():
            totals[k] = totals.get(k, 0.0) + v
        print(f"{text[:32]!r:36} plain {medians['plain'] * 1e6:7.0f} us   "
              + "   ".join(f"{rev}: {medians['plain'] / medians[rev]:.3f}" for rev in versions), flush=True)
    print(f"{'all prompts':36} plain {totals['plain'] * 1e6:7.0f} us   "
          + "   ".join(f"{rev}: {totals['plain'] / totals[rev]:.3f}" for rev in versions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
