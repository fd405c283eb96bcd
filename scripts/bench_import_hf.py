"""How long `nety-jax import-hf` takes on a GPT-2 124M-size directory (random weights, made here).

    python scripts/bench_import_hf.py [--keep DIR]

Builds a randomly initialised GPT2LMHeadModel with GPT-2 124M's config (transformers' defaults:
vocab 50257, 12 x 768, tied head) and a small byte-level BPE tokenizer, saves them with
save_pretrained, then times the whole command (`python -m nety_jax.cli import-hf`, a fresh
process: imports, reading, converting, the step-0 checkpoint: wall and CPU seconds) and, inside
this process, ``load_hf`` alone (reading and converting). Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def make_gpt2_dir(path: str) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["a small text to train a byte-level tokenizer on"] * 10, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    torch.manual_seed(0)
    eos = tok.token_to_id("<|endoftext|>")
    GPT2LMHeadModel(GPT2Config(bos_token_id=eos, eos_token_id=eos)).save_pretrained(path)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(path)


def time_command(model_dir: str, out: str) -> dict:
    """`nety-jax import-hf` in a fresh process: wall seconds, and its CPU seconds (user +
    system: the honest figure on a shared machine, where wall time waits for other work)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "nety_jax.cli", "--no-compile-cache", "import-hf", "--model",
                           model_dir, "--out", out], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT})
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return {"command_s": wall, "command_cpu_s": cpu}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keep", help="build the HF directory here (kept) instead of a temporary one")
    args = p.parse_args()
    root = tempfile.mkdtemp(prefix="bench-import-hf-")
    model_dir = args.keep or os.path.join(root, "gpt2")
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        make_gpt2_dir(model_dir)
    timing = time_command(model_dir, os.path.join(root, "run"))
    from nety_jax.models.registry import hf_converter
    start = time.perf_counter()
    cfg, _, _ = hf_converter().load_hf(model_dir)
    load_s = time.perf_counter() - start
    size = os.path.getsize(os.path.join(model_dir, "model.safetensors"))
    print(json.dumps({**timing, "load_hf_s": load_s, "safetensors_mb": size / 1e6,
                      "vocab_ours": cfg.model.vocab_size, "layers": cfg.model.layers, "d_model": cfg.model.d_model}))
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
