"""QA round 4: text a fixed tokenizer does not know (resume, --init-from, prepare --tokenizer)."""
import os

import pytest

from conftest import GPT_TINY, run_main

FRENCH = ["le chat mange la souris dans la maison.", "le chien dort près du feu, la souris aussi."] * 40
# words of letters the French tokenizer never saw: each one is <unk>, after a known "▁"
UNKNOWN = [" ".join("жзщ"[k % 3] * (1 + (i + k) % 5) + "ый" for k in range(10)) for i in range(60)]


@pytest.fixture(scope="module")
def french_spm(tmp_path_factory):
    from nety_jax.data.tokenizer import SentencePieceTokenizer
    directory = tmp_path_factory.mktemp("spm")
    tokenizer = SentencePieceTokenizer.train(FRENCH, 60)
    tokenizer.save(str(directory))
    return tokenizer, str(directory / tokenizer.FILE)


def test_text_of_unknown_words_is_mostly_unknown(french_spm):
    """SentencePiece writes a known word-boundary piece "▁" before every unknown word, so a text of
    nothing but unknown words measured 50% unknown, under the 50% refusal: a run resumed (or
    fine-tuned) on it trained on <unk> silently (its validation accuracy 0.96: it learnt to say
    <unk>). Word boundaries are not counted."""
    from nety_jax.data.coverage import check_coverage, unknown_share
    from nety_jax.errors import DataError
    tokenizer, _ = french_spm
    assert unknown_share(tokenizer, UNKNOWN)[0] == 1.0
    assert unknown_share(tokenizer, FRENCH)[0] == 0.0
    with pytest.raises(DataError, match=r"new\.txt: 100% of its [0-9,]+ tokens are unknown"):
        check_coverage(tokenizer, UNKNOWN, "new.txt", print)


def test_prepare_with_a_tokenizer_that_does_not_know_the_text_is_refused(french_spm, tmp_path):
    """`prepare --tokenizer` wrote shards of <unk> without a word (no coverage check at all)."""
    _, model_file = french_spm
    corpus = tmp_path / "новый.txt"
    corpus.write_text("\n".join(UNKNOWN) + "\n", encoding="utf-8")
    out = tmp_path / "prepared"
    result = run_main("prepare", "--config", GPT_TINY, "--text", corpus, "--tokenizer", model_file, "--out", out,
                      "--no-progress", "--workers", "1")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"{corpus}: 100% of its" in result.stderr and f"the tokenizer of {model_file}" in result.stderr
    assert not out.exists() and not [n for n in os.listdir(tmp_path) if n.startswith(".prepared")]
    (tmp_path / "fr.txt").write_text("\n".join(FRENCH) + "\n", encoding="utf-8")
    assert run_main("prepare", "--config", GPT_TINY, "--text", tmp_path / "fr.txt", "--tokenizer", model_file,
                    "--out", out, "--no-progress", "--workers", "1", "--set", "data.seq_len=8").returncode == 0


def test_fine_tuning_on_text_the_source_tokenizer_does_not_know_is_refused(trained_gpt, tmp_path):
    corpus = tmp_path / "новый.txt"
    corpus.write_text("\n".join(UNKNOWN) + "\n", encoding="utf-8")
    result = run_main("train", "--config", GPT_TINY, "--init-from", trained_gpt[0], "--text", corpus,
                      "--workdir", tmp_path / "run", "--no-progress", "--set", "train.steps=2",
                      "--set", "train.warmup_steps=0")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"the tokenizer of --init-from {trained_gpt[0]}" in result.stderr, result.stderr
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_a_resume_says_which_model_settings_it_changes():
    """`train --set model.dropout=0.1` on a resume trained with the new dropout (and saved it in
    config.yaml) while its "honoured:" line listed only data, train and decode fields: a changed
    model.dropout / attention_dropout / dtype is said too."""
    from nety_jax.config import load_config
    from nety_jax.training.setup import reconcile
    saved = load_config(GPT_TINY)
    requested = load_config(GPT_TINY, ["model.dropout=0.1", "model.dtype=bfloat16", "train.steps=400"])
    assert reconcile(saved, requested) == ["model.dropout: 0.0 -> 0.1", "model.dtype: 'float32' -> 'bfloat16'",
                                           "train.steps: 300 -> 400"]
