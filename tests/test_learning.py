"""Learning does not silently break: a tiny model trained through the real `train()` path on
a short reverse task (10 symbols, lengths 3-6) must answer unseen strings exactly (greedy), after a fixed budget.

The threshold is far below what the model reaches (see the test) and far above chance
(a random reply of the right symbols is exact with probability < 1e-3), so a change that
breaks the attention, the encoder pooling, the masks or the optimizer fails it.
"""
import json

from nety_jax.config import load_config
from nety_jax.data import synthetic
from nety_jax.serving.pretrained import load_pretrained
from nety_jax.training.loop import train
from conftest import QUIET, TINY

THRESHOLD = 0.8  # 500 steps reach above it with a margin
STEPS = 500
OVERRIDES = ["data.tokenizer=word", "data.vocab_size=64", "data.max_src_len=16", "data.max_tgt_len=16",
             "data.val_fraction=0.02", "model.d_model=64", "model.enc_hidden=64", "model.head_dims=[64]",
             "model.d_ff=128", "model.dec_heads=4", "model.dropout=0.0", f"train.steps={STEPS}",
             "train.batch_size=32", "train.learning_rate=3e-3", "train.warmup_steps=30",
             f"train.eval_every={STEPS}", f"train.checkpoint_every={STEPS}", "train.bleu_samples=0",
             "decode.max_new_tokens=16"]


def test_tiny_model_learns_to_reverse(tmp_path):
    data = synthetic.split("reverse", 3000, 100, train_lengths=(3, 6), longer=None, seed=0, num_symbols=10)
    path = tmp_path / "reverse.jsonl"
    path.write_text("".join(json.dumps({"input": s, "target": t}) + "\n" for s, t in data["train"]))
    cfg = load_config(TINY, OVERRIDES)
    train(cfg, str(tmp_path / "run"), data=str(path), **QUIET)
    model = load_pretrained(str(tmp_path / "run"))
    replies = model.generate([s for s, _ in data["test"]], temperature=0.0)
    exact = synthetic.exact_match([r[0] for r in replies], [t for _, t in data["test"]])
    assert exact >= THRESHOLD, f"reverse exact match {exact:.2f} < {THRESHOLD} after {STEPS} steps"


def test_synthetic_tasks_are_exact_and_disjoint():
    assert synthetic.answer("sort", ["c", "a", "b", "a"]) == ["a", "a", "b", "c"]
    assert synthetic.answer("reverse", ["a", "b", "c"]) == ["c", "b", "a"]
    data = synthetic.split("copy", 300, 50, train_lengths=(4, 6), longer=(7, 8), seed=1)
    train_src = {s for s, _ in data["train"]}
    assert not train_src & {s for s, _ in data["test"]}
    assert all(4 <= len(s.split()) <= 6 for s, _ in data["test"])
    assert all(7 <= len(s.split()) <= 8 for s, _ in data["longer"])
    assert synthetic.split("copy", 300, 50, seed=1)["train"] == synthetic.split("copy", 300, 50, seed=1)["train"]
    assert synthetic.exact_match(["a b", "a c"], ["a b", "a b"]) == 0.5
    assert synthetic.token_accuracy(["a b", "a"], ["a b", "a b"]) == 0.75
