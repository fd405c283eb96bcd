"""Data: pair and text readers, tokenizers, bucketed resumable batching, prompt batches."""
from nety_jax.data.batching import BatchIterator, eval_batches
from nety_jax.data.pairs import Encoded, default_corpus_path, encode_pairs, read_pairs, split_pairs
from nety_jax.data.text import Windows, default_text_path, encode_text, read_text, split_text
from nety_jax.data.tokenizer import SentencePieceTokenizer, WordTokenizer, load_tokenizer

__all__ = ["BatchIterator", "eval_batches", "Encoded", "default_corpus_path", "encode_pairs",
           "read_pairs", "split_pairs", "Windows", "default_text_path", "encode_text", "read_text",
           "split_text", "SentencePieceTokenizer", "WordTokenizer", "load_tokenizer"]
