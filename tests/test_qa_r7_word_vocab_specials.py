"""QA round 7: a word vocabulary whose ids 0-3 are not the model's special tokens."""
import json

import pytest


def _vocab(path, words):
    path.write_text(json.dumps({"word_to_idx": {w: i for i, w in enumerate(words)},
                                "idx_to_word": {str(i): w for i, w in enumerate(words)}}))
    return str(path)


@pytest.mark.parametrize("words, found", [
    (["<pad>", "<unk>", "<sos>", "<eos>", "bonjour", "toi"], "id 1 must be '<sos>'.*found '<unk>'"),
    (["bonjour", "toi", "le", "chat", "mange"], "id 0 must be '<pad>'.*found 'bonjour'"),
])
def test_a_vocabulary_with_other_special_ids_is_refused(tmp_path, words, found):
    """`import-torch --vocab` (and a run's vocab.json) with the specials in another order, or none,
    was taken: the model's ids are fixed (pad 0, sos 1, eos 2, unk 3), so a reply started from the
    word at id 1, the word at id 0 was stripped from every reply as padding and unknown words
    became the word at id 3, without a word said. It is one line naming the file and the id."""
    from nety_jax.data.tokenizer import WordTokenizer
    from nety_jax.errors import DataError
    with pytest.raises(DataError, match=found):
        WordTokenizer.load_vocab(_vocab(tmp_path / "vocab.json", words))


def test_netys_order_is_taken(tmp_path):
    from nety_jax.data.tokenizer import WordTokenizer
    tok = WordTokenizer.load_vocab(_vocab(tmp_path / "vocab.json", ["<pad>", "<sos>", "<eos>", "<unk>", "bonjour"]))
    assert tok.encode("bonjour inconnu") == [4, 3] and tok.decode([1, 4, 2, 0]) == "bonjour"
