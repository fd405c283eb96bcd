"""Incremental detokenization: the text of a growing reply without decoding all of it each time.

The engines read a streamed row's text after every chunk (to stream it and to look for stop
strings). Decoding the whole reply each time costs O(length) per read, O(length^2 / chunk)
per reply. ``IncrementalText`` decodes only the ids since the last read plus a look-back
window before them, as vLLM's incremental detokenizer does: with ``prefix <= read``
offsets into the ids,

    new text = decode(ids[prefix:])[len(decode(ids[prefix:read])):]

is the text the ids after ``read`` add: a window's decoding differs from the whole reply's
only at its start (SentencePiece drops the first piece's leading space, a multi-byte
character cut by the window start decodes to replacement characters), and that start is
in the part subtracted. The offsets move on (``prefix = read``, ``read = len(ids)``) only
where the window's text ends in a whole character, so a character whose bytes arrive in
several pieces (byte fallback, byte-level BPE) is never split at ``read``.

Where that reasoning does not hold, the whole reply is decoded instead (the answer is then
``tokenizer.decode`` itself): the window's look-back decodes to nothing (its pieces are
specials, so the first new piece would lose its space) or the window's text does not begin
with the look-back's (a decoder that rewrote text across the boundary). The text is thus
always exactly ``tokenizer.decode(ids)`` (``tests/test_detokenize.py`` checks it on random
ids, byte pieces and splits).
"""
from __future__ import annotations

REPLACEMENT = "\ufffd"  # what an incomplete UTF-8 character decodes to


class IncrementalText:
    """``tokenizer.decode(ids)`` of a list of ids that only grows at its end.

    ``context``: ids decoded before the reply (a completion that continues its prompt): the
    text is then what ``context + ids`` adds to ``context``'s own decoding, as
    ``engine._Continuing`` gives it, or ``decode(ids)`` where the context's text is not a
    prefix of the whole."""

    def __init__(self, tokenizer, context=()):
        self.tokenizer, self.context = tokenizer, list(context)
        self.ids = list(self.context)  # context + the reply's ids seen so far
        self.head = tokenizer.decode(self.context) if self.context else ""
        self.prefix, self.read = 0, len(self.ids)  # the look-back window and the ids already in `text`
        self.text = self.head  # decode(ids[:read])
        self.whole_decodes = 0  # reads that fell back to decoding everything (for tests)

    def update(self, reply: list) -> str:
        """The text of ``reply`` (every id so far: its earlier ids as given before)."""
        new = reply[len(self.ids) - len(self.context):]
        if new:
            self.ids.extend(new)
        whole = self._text()
        if not self.context:
            return whole
        if whole.startswith(self.head):
            return whole[len(self.head):]
        return self.tokenizer.decode(self.ids[len(self.context):])

    def _text(self) -> str:
        if self.read == len(self.ids):
            return self.text
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix:self.read]) if self.read > self.prefix else ""
        window = decode(self.ids[self.prefix:])
        if (before or self.prefix == 0) and window.startswith(before):
            text = self.text + window[len(before):]
            if not window.endswith(REPLACEMENT):  # whole characters: later ids cannot change this text
                self.prefix, self.read, self.text = self.read, len(self.ids), text
            return text
        self.whole_decodes += 1
        return decode(self.ids)
