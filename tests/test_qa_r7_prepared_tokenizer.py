"""QA round 7: a prepared directory whose tokenizer is not the one its shards were encoded with."""
import shutil

import pytest

from conftest import GPT_TINY, run_main

pytest.importorskip("array_record")


def _prepare(tmp_path, name, *sets):
    corpus = tmp_path / "t.txt"
    corpus.write_text("".join(f"le chien {i} dort dans la maison {i % 7}.\n" for i in range(80)),
                      encoding="utf-8")
    out = tmp_path / name
    result = run_main("prepare", "--config", GPT_TINY, "--set", "data.seq_len=16", *sets, "--out", out,
                      "--workers", "1", "--no-progress", "--shard-size", "40", "--text", corpus)
    assert result.returncode == 0, result.stderr
    return out


def test_a_tokenizer_replaced_in_a_prepared_directory_is_refused(tmp_path):
    """Another tokenizer copied over a prepared directory's own (here a 30-piece BPE over shards
    a unigram model of more pieces encoded) was used without a word: `train --text DIR` set
    model.vocab_size from it and trained on ids it reads as other pieces, ids past its vocabulary
    included (JAX clamps them). `prepared.json` records the tokenizer's digest; nothing read it."""
    from nety_jax.config import load_config
    from nety_jax.errors import DataError
    from nety_jax.training.prepare_data import open_prepared
    ours = _prepare(tmp_path, "ours", "--set", "data.vocab_size=60")
    other = _prepare(tmp_path, "other", "--set", "data.vocab_size=30", "--set", "data.spm_model_type=bpe")
    cfg = load_config(GPT_TINY, ["data.vocab_size=60", "data.seq_len=16"])
    tokenizer, _ = open_prepared(cfg, str(ours))  # its own tokenizer: taken
    assert tokenizer.vocab_size > 30
    for name in ("tokenizer.json", "tokenizer.model"):
        shutil.copy(other / name, ours / name)
    with pytest.raises(DataError, match="is not the one its shards were encoded with"):
        open_prepared(cfg, str(ours))
    result = run_main("train", "--config", GPT_TINY, "--set", "data.vocab_size=60", "--set", "data.seq_len=16",
                      "--text", ours, "--workdir", tmp_path / "run", "--steps", "1", "--no-progress",
                      "--set", "train.warmup_steps=0")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "prepare the data again" in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
