"""Incremental detokenization (serving/detokenize.py): the text after every read equals decoding
the whole reply, for random ids (byte-fallback pieces of multi-byte characters, specials, lone
bytes), replies cut at random, and continuations of a prompt."""
import io
import random

import pytest

from nety_jax.config.sections import EOS_ID
from nety_jax.serving.detokenize import IncrementalText
from nety_jax.serving.engine import _Continuing
from conftest import ROOT

TEXT = (ROOT / "nety_jax" / "resources" / "textes_fr.txt").read_text(encoding="utf-8").splitlines()[:200]
WIDE = ["naïve café, ça déçoit ! 日本語のテキスト 🙂🚀 Über straße", "¿Qué tal? – «très» € ½ ĳ ﬁ ∑ 𝔘𝔫𝔦"]


def _byte_fallback_sentencepiece():
    """A SentencePiece BPE with byte fallback: characters outside its pieces become 1-4 byte
    pieces (<0xE6> <0x97> <0xA5>), which decode to one character only together."""
    import sentencepiece as spm
    from nety_jax.data.tokenizer import SentencePieceTokenizer
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXT[:100] + WIDE * 5), model_writer=out, vocab_size=400, model_type="bpe",
        byte_fallback=True, hard_vocab_limit=False, character_coverage=0.98, pad_id=0, bos_id=1, eos_id=2,
        unk_id=3, pad_piece="<pad>", bos_piece="<sos>", eos_piece="<eos>", unk_piece="<unk>", minloglevel=2)
    return SentencePieceTokenizer(out.getvalue())


@pytest.fixture(scope="module", params=["sentencepiece-bytes", "sentencepiece", "word", "hf-byte-level"])
def tokenizer(request):
    from nety_jax.data.hf_tokenizer import HFTokenizer
    from nety_jax.data.tokenizer import SentencePieceTokenizer, WordTokenizer
    return {"sentencepiece-bytes": _byte_fallback_sentencepiece,
            "sentencepiece": lambda: SentencePieceTokenizer.train(TEXT, 300),
            "word": lambda: WordTokenizer.build(TEXT, 300),
            "hf-byte-level": lambda: HFTokenizer.train(TEXT + WIDE, 400)}[request.param]()


def _replies(tokenizer, rng: random.Random, count: int):
    """Random ids (specials and lone bytes included) and real multi-byte text's ids."""
    n = tokenizer.vocab_size
    for k in range(count):
        if k % 2:
            text = " ".join(rng.choice(TEXT + WIDE * 20).split()[: rng.randint(1, 12)])
            yield [i for i in tokenizer.encode(text) if i != EOS_ID]
        else:
            yield [rng.choice([0, 1, 3]) if rng.random() < 0.05 else rng.randrange(4, n)
                   for _ in range(rng.randint(0, 40))]


def _expected(tokenizer, context, ids):
    return _Continuing(tokenizer, context).decode(ids) if context else tokenizer.decode(ids)


def test_incremental_text_equals_decoding_the_whole_reply_after_every_read(tokenizer):
    rng, reads, whole = random.Random(7), 0, 0
    for ids in _replies(tokenizer, rng, 300):
        context = [rng.randrange(4, tokenizer.vocab_size) for _ in range(rng.randint(1, 8))] \
            if rng.random() < 0.3 else []
        text, seen = IncrementalText(tokenizer, context), 0
        while True:
            assert text.update(ids[:seen]) == _expected(tokenizer, context, ids[:seen]), (context, ids[:seen])
            reads += 1
            if seen == len(ids):
                break
            seen = min(len(ids), seen + rng.choice([1, 1, 2, 3, 8]))
        whole += text.whole_decodes
    assert whole < reads / 4, (whole, reads)  # the windows, not whole decodes, give the text


def test_a_character_split_over_byte_pieces_appears_once_whole():
    tokenizer = _byte_fallback_sentencepiece()
    ids = tokenizer.encode("ça 日本 🙂")
    assert sum(tokenizer.sp.id_to_piece(i).startswith("<0x") for i in ids) >= 4, ids  # really byte pieces
    text = IncrementalText(tokenizer)
    for n in range(len(ids) + 1):
        assert text.update(ids[:n]) == tokenizer.decode(ids[:n])
    assert text.update(ids) == "ça 日本 🙂"


def test_the_window_decodes_only_the_new_ids_and_a_look_back():
    """Each read decodes the ids since the last one and those of the read before (vLLM's
    window), not the whole reply: the cost per read does not grow with the reply."""
    from nety_jax.data.tokenizer import WordTokenizer

    class Counting(WordTokenizer):
        decoded = 0

        def decode(self, ids):
            Counting.decoded += len(ids)
            return super().decode(ids)
    words = [f"w{i}" for i in range(300)]
    tokenizer = Counting({w: i for i, w in enumerate(["<pad>", "<sos>", "<eos>", "<unk>"] + words)})
    ids = list(range(4, 304))
    text = IncrementalText(tokenizer)
    for n in range(8, 301, 8):
        assert text.update(ids[:n]) == " ".join(words[:n])
    assert Counting.decoded < 4 * 300, Counting.decoded  # whole decodes would be 8 + 16 + ... = 5,700
