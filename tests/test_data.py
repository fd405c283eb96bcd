import json
import re
import subprocess
import sys

import numpy as np
import pytest

from nety_jax.config import DataConfig, EOS_ID, PAD_ID, SOS_ID
from nety_jax.data import (BatchIterator, default_corpus_path, encode_pairs, eval_batches, read_pairs,
                           split_pairs)
from nety_jax.data.tokenizer import SentencePieceTokenizer, WordTokenizer, load_tokenizer
from nety_jax.errors import DataError
from conftest import RNN_LM, ROOT


def test_embedded_corpus_is_large_varied_and_up_to_date():
    report = read_pairs(default_corpus_path(), DataConfig())
    pairs = report.pairs
    assert len(pairs) >= 2000 and len(set(pairs)) == len(pairs)
    text = " ".join(a + " " + b for a, b in pairs)
    for word in ("Bonjour", "météo", "fatigué", "cuisiner", "métier", "NETY", "heures", "plus"):
        assert word in text
    assert any(c in text for c in "éèàçô") and "?" in text and "!" in text
    for script in ("build_corpus.py", "build_text.py"):
        done = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--check"],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stdout


def test_tsv_and_custom_keys(tmp_path):
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("salut\tbonjour\nça va ?\toui\n", encoding="utf-8")
    assert read_pairs(str(tsv), DataConfig()).pairs == [("salut", "bonjour"), ("ça va ?", "oui")]
    jl = tmp_path / "pairs.jsonl"
    jl.write_text(json.dumps({"q": "a", "r": "b"}) + "\n", encoding="utf-8")
    assert read_pairs(str(jl), DataConfig(input_key="q", target_key="r")).pairs == [("a", "b")]


@pytest.mark.parametrize("content, message", [
    (b"", "no (input, target) pairs found"),
    (b'{"input": "a", "target": "b"}\n{"question": "a", "target": "b"}\n', ":2: missing key 'input'"),
    (b'{"input": "a", "target": 3}\n', ":1: 'target' must be a string, got int"),
    (b'{"input": "a", "target": "b"}\n{"input": "\xff\xfe", "target": "b"}\n', ":2: invalid UTF-8"),
    (b'{"input": "  ", "target": "b"}\n', ":1: 'input' is empty"),
    (b'{"input": "a", "target": "b"\n', ":1: invalid JSON"),
    (b'["a", "b"]\n', ":1: expected a JSON object"),
])
def test_bad_lines_are_named(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        read_pairs(str(path), DataConfig())
    assert str(path) in str(err.value) and message in str(err.value)


def test_skip_bad_counts(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"input": "a", "target": "b"}\nnot json\n{"input": "c", "target": ""}\n'
                    '{"input": "d", "target": "e"}\n', encoding="utf-8")
    report = read_pairs(str(path), DataConfig(), skip_bad=True)
    assert report.pairs == [("a", "b"), ("d", "e")] and report.skipped == 2
    assert ":2: invalid JSON" in report.first_error


def test_sentencepiece_ids_and_round_trip(tmp_path):
    pairs = read_pairs(default_corpus_path(), DataConfig()).pairs[:400]
    tok = SentencePieceTokenizer.train([t for p in pairs for t in p], 300)
    assert tok.sp.pad_id() == PAD_ID and tok.sp.bos_id() == SOS_ID and tok.sp.eos_id() == EOS_ID
    text = "Bonjour, ça va très bien !"
    assert tok.decode([SOS_ID] + tok.encode(text) + [EOS_ID, PAD_ID, 7]) == text
    tok.save(str(tmp_path))
    again = load_tokenizer(str(tmp_path))
    assert again.encode(text) == tok.encode(text)


def test_word_tokenizer_is_netys(tmp_path):
    vocab = {"<pad>": 0, "<sos>": 1, "<eos>": 2, "<unk>": 3, "bonjour": 4, "toi": 5}
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps({"word_to_idx": vocab, "idx_to_word": {str(v): k for k, v in vocab.items()}}))
    tok = WordTokenizer.load_vocab(str(path))
    assert tok.encode("Bonjour   TOI inconnu") == [4, 5, 3]
    assert tok.decode([1, 4, 5, 2, 4]) == "bonjour toi"
    path.write_text(json.dumps({"word_to_idx": {"a": 0, "b": 5}}))
    with pytest.raises(DataError, match="without gaps"):
        WordTokenizer.load_vocab(str(path))


def _encoded(n=300):
    pairs = read_pairs(default_corpus_path(), DataConfig()).pairs[:n]
    tok = WordTokenizer.build([t for p in pairs for t in p], 500)
    return encode_pairs(pairs, tok, DataConfig(max_src_len=16, max_tgt_len=16)), tok


def test_targets_are_framed_and_cut():
    data, _ = _encoded()
    assert all(t[0] == SOS_ID for t in data.tgt)
    assert all(len(s) <= 16 and len(t) <= 17 for s, t in zip(data.src, data.tgt))
    assert all(t[-1] == EOS_ID for t in data.tgt if len(t) < 17)
    assert data.truncated > 0


def test_iterator_is_deterministic_resumable_and_bucketed():
    data, _ = _encoded()
    it = BatchIterator(data, 8, seed=3)
    first = [next(it) for _ in range(50)]  # crosses an epoch boundary (37 batches an epoch)
    resumed = BatchIterator(data, 8, seed=3, **{"epoch": 0, "index": 20})
    for a, b in zip(first[20:], [next(resumed) for _ in range(30)]):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    assert it.state() == {"epoch": 1, "index": 50 - it.batches_per_epoch}
    other = BatchIterator(data, 8, seed=4)
    assert not np.array_equal(next(other)["src"], first[0]["src"])
    assert all(b["src"].shape[1] % 8 == 0 or b["src"].shape[1] == 16 for b in first)
    assert it.padding_fraction() < 0.5


def test_subword_sampling_resegments_batches_deterministically():
    pairs = read_pairs(default_corpus_path(), DataConfig()).pairs[:200]
    tok = SentencePieceTokenizer.train([t for p in pairs for t in p], 300)
    cfg = DataConfig(max_src_len=48, max_tgt_len=96, subword_alpha=0.3)
    fixed = encode_pairs(pairs, tok, cfg)  # not trained on: never sampled
    data = encode_pairs(pairs, tok, cfg, training=True)
    assert fixed.sampler is None and data.sampler is not None
    idx = np.arange(16)
    a, b = data.collate(idx), data.collate(idx)
    for k in a:  # the same batch position gives the same batch (exact resume)
        np.testing.assert_array_equal(a[k], b[k])
    assert fixed.truncated == 0  # so every sampled row can be checked whole below
    changed = 0
    for row, i in enumerate(idx):  # another segmentation of the same text, never cut
        ids = [t for t in a["targets"][row] if t != PAD_ID]
        assert ids[-1] == EOS_ID and tok.decode(ids) == pairs[i][1]
        assert tok.decode(a["src"][row][: a["src_len"][row]]) == pairs[i][0]
        changed += ids != fixed.reference(i)
    assert changed >= 4  # most rows sampled another segmentation than the best one


@pytest.fixture(scope="module")
def bpe_tokenizer():
    pairs = read_pairs(default_corpus_path(), DataConfig()).pairs
    return SentencePieceTokenizer.train([t for p in pairs for t in p], 600, "bpe"), pairs


def test_bpe_dropout_at_rate_0_is_sentencepiece_encode(bpe_tokenizer):
    """Our merge loop against SentencePiece's own encoder: every corpus text, unknown
    characters, spaces, an empty string."""
    tok, pairs = bpe_tokenizer
    from nety_jax.data.bpe_dropout import BpeDropout
    sampler = BpeDropout(tok.sp)
    texts = [t for p in pairs for t in p] + ["Ωmega ünïcode 🙂 x  y", "", "  ", "L'ÉTÉ, à 10h30 ?!"]
    assert [t for t in texts if sampler.sample(t, 0.0, 1) != tok.sp.encode(t)] == []


@pytest.fixture(scope="module")
def unigram_tokenizer():
    pairs = read_pairs(default_corpus_path(), DataConfig()).pairs
    return SentencePieceTokenizer.train([t for p in pairs for t in p], 600, "unigram"), pairs


def test_unigram_sampling_at_high_alpha_is_sentencepiece_encode(unigram_tokenizer):
    """Our lattice against SentencePiece's encoder: sharpened by alpha 10^4, the sampler draws the
    most likely segmentation, which is encode's, on every corpus text and on unknown characters
    (merged into one <unk>), NFKC-normalized ones, spaces and an empty string."""
    tok, pairs = unigram_tokenizer
    from nety_jax.data.unigram_sampling import UnigramSampler
    sampler = UnigramSampler(tok.sp)
    texts = [t for p in pairs for t in p] + ["Ωmega ünïcode 🙂漢字 x  y", "", "  ", "L'ÉTÉ, à 10h30 ?!", "ﬁ Ⅻ"]
    assert [t for t in texts if sampler.sample(t, 1e4, 1) != tok.sp.encode(t)] == []


def _segmentations(pieces: dict, text: str, alpha: float) -> dict:
    """Every segmentation of ``text`` into ``pieces`` (piece -> (id, score)) with its probability,
    proportional to exp(alpha x its summed scores), by plain recursion."""
    weights = {}

    def walk(start, ids, score):
        if start == len(text):
            weights[tuple(ids)] = np.exp(alpha * score)
        for end in range(start + 1, len(text) + 1):
            if text[start:end] in pieces:
                i, s = pieces[text[start:end]]
                walk(end, ids + [i], score + s)
    walk(0, [], 0.0)
    total = sum(weights.values())
    return {k: w / total for k, w in weights.items()}


@pytest.mark.parametrize("word,alpha", [("délicieux", 0.1), ("appétit", 0.3)])
def test_unigram_sampling_draws_sentencepiece_distribution(unigram_tokenizer, word, alpha):
    """20,000 draws of ours and of SentencePiece's sampler against the exact distribution of
    the word's segmentations, enumerated."""
    import sentencepiece as spm
    tok, _ = unigram_tokenizer
    exact = _segmentations({tok.piece(i): (i, tok.sp.get_score(i)) for i in range(tok.vocab_size)
                            if not (tok.sp.is_control(i) or tok.sp.is_unknown(i))},
                           tok.sp.normalize(word), alpha)
    assert len(exact) >= 5 and max(exact.values()) < 0.9  # a real choice between segmentations
    n = 20_000
    spm.set_random_generator_seed(5)
    for draws in ([tuple(tok.sample(word, alpha, k)) for k in range(n)],
                  [tuple(tok.sp.encode(word, enable_sampling=True, alpha=alpha, nbest_size=-1)) for _ in range(n)]):
        seen = {k: draws.count(k) / n for k in set(draws)}
        assert set(seen) <= set(exact)
        assert 0.5 * sum(abs(seen.get(k, 0.0) - p) for k, p in exact.items()) < 0.04


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_subword_sampling_is_the_same_in_another_process(kind, request, tmp_path):
    tok, pairs = request.getfixturevalue(f"{kind}_tokenizer")
    tok.save(str(tmp_path))
    texts = [p[1] for p in pairs[:40]]
    here = [tok.sample(t, 0.2, 7 + k) for k, t in enumerate(texts)]
    code = ("import json, sys; from nety_jax.data.tokenizer import load_tokenizer; "
            f"tok = load_tokenizer({str(tmp_path)!r}); texts = json.load(sys.stdin); "
            "print(json.dumps([tok.sample(t, 0.2, 7 + k) for k, t in enumerate(texts)]))")
    done = subprocess.run([sys.executable, "-c", code], input=json.dumps(texts), capture_output=True,
                          text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == here
    assert sum(ids != tok.encode(t) for ids, t in zip(here, texts)) >= 10  # other segmentations
    assert [tok.decode(ids) for ids in here] == texts  # ... of the same text
    assert here != [tok.sample(t, 0.2, 8 + k) for k, t in enumerate(texts)]  # another seed, others


def test_split_and_eval_batches():
    pairs = [(str(i), str(i)) for i in range(101)]
    train, val = split_pairs(pairs, 0.1, seed=0)
    assert len(val) == 10 and len(train) == 91 and not set(train) & set(val)
    data, _ = _encoded(21)
    batches = eval_batches(data, 8)
    assert len(batches) == 3 and batches[-1]["weight"].tolist() == [1] * 5 + [0] * 3


def test_subword_sampling_is_refused_for_token_streams():
    from nety_jax.config import load_config
    from nety_jax.errors import ConfigError
    from nety_jax.models import get_model
    from nety_jax.tasks import Corpus
    cfg = load_config(RNN_LM, ["data.subword_alpha=0.2", "data.tokenizer=sentencepiece"])
    with pytest.raises(ConfigError, match="data.subword_alpha=0.2 re-segments"):
        get_model(cfg.model).task.encode(cfg, None, Corpus(["a b"], ["a"], ["a b"]), "x.txt")


def test_a_line_longer_than_sentencepiece_takes_is_learned_not_dropped():
    """SentencePiece's trainer drops sentences over 4192 bytes without a word: a text of one such line
    failed blaming data.vocab_size, and a long line's characters became <unk>. Lines are cut first."""
    import random
    from nety_jax.config.sections import UNK_ID
    from nety_jax.data.tokenizer import SPM_MAX_BYTES, _sentences
    rng = random.Random(0)
    words = ["bonjour", "maison", "kilomètre", "zèbre", "été", "œuvre", "façade"]
    line = " ".join(rng.choice(words) for _ in range(5000)) + " Ωmega"  # 40 KB, a character seen only here
    tok = SentencePieceTokenizer.train([line], 60)
    assert UNK_ID not in tok.encode("Ωmega zèbre")
    for text in (line, "é" * 9000, "x " * 5000, ""):
        pieces = _sentences(text)
        assert all(len(p.encode()) <= SPM_MAX_BYTES for p in pieces)
        assert "".join(pieces).replace(" ", "") == text.replace(" ", "")


@pytest.mark.parametrize("content, message", [(b"", "is empty (0 bytes), not a SentencePiece model"),
                                              (b"\x08\x01garbage" * 20, "not a SentencePiece model (damaged")])
def test_an_empty_or_damaged_tokenizer_model_is_one_line(tmp_path, capfd, content, message):
    tok = SentencePieceTokenizer.train(["le chat mange la souris", "la souris dort"] * 20, 40)
    tok.save(str(tmp_path))
    (tmp_path / "tokenizer.model").write_bytes(content)
    with pytest.raises(DataError, match=f"tokenizer.model: {re.escape(message)}"):
        load_tokenizer(str(tmp_path))
    assert capfd.readouterr().err == ""  # no absl / SentencePiece logging
