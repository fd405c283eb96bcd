"""The k most likely next WORDS after a text, with their probabilities, for language models.

With a word tokenizer every id is a word. With SentencePiece a word is one piece
that starts a word (a leading U+2581) followed by continuation pieces: each of
the most likely word-starting pieces is extended greedily, in one batch, while
the model's most likely next piece continues the word; the word's probability
is the product of its pieces' probabilities (the probability of that spelling).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from nety_jax.config.sections import UNK_ID
from nety_jax.data.prompts import encode_prompts
from nety_jax.errors import NetyError
from nety_jax.tasks import require_continuation

MAX_PIECES = 8  # continuation pieces per word


@functools.partial(jax.jit, static_argnames=("model", "max_new"))
def _prefill(variables, tokens, lengths, *, model, max_new):
    logits, cache = model.start_decoding(variables, tokens, lengths, max_new)
    return jax.nn.softmax(logits, axis=-1), cache


@functools.partial(jax.jit, static_argnames=("model",))
def _step(variables, tokens, cache, *, model):
    logits, cache = model.decode_step(variables, tokens, cache)
    return jax.nn.softmax(logits, axis=-1), cache


def _is_word(tokenizer, i: int) -> bool:
    piece = tokenizer.piece(i).lstrip("\u2581")
    return i > UNK_ID and any(c.isalnum() for c in piece)


def predict_next(pretrained, text: str, top_k: int = 5) -> list[tuple[str, float]]:
    model, tok, variables = pretrained.model, pretrained.tokenizer, pretrained.variables
    require_continuation(model.task, "predict-next")
    if top_k < 1:
        raise NetyError(f"--top-k={top_k} must be >= 1")
    vocab = model.cfg.vocab_size
    width = min(vocab, max(4 * top_k, 16))
    batch = encode_prompts(model.prompts, tok, [text] * width, pretrained.config.data, MAX_PIECES + 1,
                           pad_batch=False)
    if batch.cut:  # as generate/complete say it (README: a prompt too long is cut with a warning)
        pretrained.warn(f"warning: the text was cut to {batch.tokens.shape[1]} tokens (the longest this model "
                        "takes with room for the next word)")
    probs, cache = _prefill(variables, jnp.asarray(batch.tokens), jnp.asarray(batch.lengths),
                            model=model, max_new=MAX_PIECES + 1)
    first = np.asarray(probs[0])
    starts = [int(i) for i in np.argsort(-first) if _is_word(tok, int(i)) and tok.starts_word(int(i))]
    starts = starts[:width]
    if not starts:
        return []
    words = {r: [i] for r, i in enumerate(starts)}
    scores = np.asarray([first[i] for i in starts], np.float64)
    live = np.ones(len(starts), bool)
    current = np.asarray(starts + [starts[0]] * (width - len(starts)), np.int32)
    live[len(starts):] = False
    for _ in range(MAX_PIECES if _subwords(tok) else 0):
        probs, cache = _step(variables, jnp.asarray(current), cache, model=model)
        probs = np.asarray(probs)
        best = probs.argmax(axis=-1)
        for r in range(len(starts)):
            if live[r] and _is_word(tok, int(best[r])) and not tok.starts_word(int(best[r])):
                words[r].append(int(best[r]))
                scores[r] *= probs[r, best[r]]
            else:
                live[r] = False
        if not live.any():
            break
        current = best.astype(np.int32)
    merged: dict[str, float] = {}
    for r in range(len(starts)):
        word = tok.decode(words[r]).strip()
        if word:
            merged[word] = merged.get(word, 0.0) + float(scores[r])
    return sorted(merged.items(), key=lambda kv: -kv[1])[:top_k]


def _subwords(tokenizer) -> bool:
    """True when words can span several ids (SentencePiece, HF), False for word vocabularies."""
    return getattr(tokenizer, "subwords", hasattr(tokenizer, "sp"))
