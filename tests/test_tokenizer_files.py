"""A tokenizer's files that cannot be read are one DataError naming the file, never a traceback."""
import pytest

from nety_jax.data.tokenizer import WordTokenizer, load_tokenizer
from nety_jax.errors import DataError


def test_a_vocabulary_path_that_is_a_directory_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path}: cannot read"):
        WordTokenizer.load_vocab(str(tmp_path))  # import-torch --vocab DIR


def test_missing_and_malformed_tokenizer_files_name_the_file(tmp_path):
    with pytest.raises(DataError, match="vocab.json: vocabulary file not found"):
        WordTokenizer.load_vocab(str(tmp_path / "vocab.json"))
    (tmp_path / "vocab.json").write_text("{not json")
    with pytest.raises(DataError, match="vocab.json: not a JSON vocabulary"):
        WordTokenizer.load_vocab(str(tmp_path / "vocab.json"))
    with pytest.raises(DataError, match="tokenizer.json: no tokenizer in this run directory"):
        load_tokenizer(str(tmp_path))
    (tmp_path / "tokenizer.json").mkdir()
    with pytest.raises(DataError, match="tokenizer.json: cannot read"):
        load_tokenizer(str(tmp_path))
