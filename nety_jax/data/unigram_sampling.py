"""Unigram subword sampling (Kudo, 2018) over a SentencePiece unigram model, reproducible anywhere.

SentencePiece's own sampler (``encode(enable_sampling=True, nbest_size=-1)``) gives a seed a
different segmentation in each process (0.2.x), so a resumed run could not redraw the batches
of an uninterrupted one. This sampler draws from the same distribution with a
``random.Random(seed)`` of its own, so the same text and seed give the same ids in every process.

The lattice is SentencePiece's (``Model::PopulateNodes``): at every position of the normalized
text, a node for each normal piece that starts there (its score: the piece's log probability)
and each user-defined one (length x the highest score - 0.1), and an unknown node one character
long, scored 10 below the lowest piece, where no one-character piece matches. A segmentation is
drawn with probability proportional to exp(alpha x the sum of its scores), by the forward
algorithm and backward sampling, as ``Lattice::Sample`` does. Consecutive unknown pieces become
one ``<unk>``, as in ``encode``.
"""
from __future__ import annotations

import math
import random

from sentencepiece import sentencepiece_model_pb2 as spm_pb2

UNK_PENALTY = 10.0  # SentencePiece's kUnkPenalty


def _log_add(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    hi, lo = (a, b) if a >= b else (b, a)
    return hi + math.log1p(math.exp(lo - hi))


class UnigramSampler:
    """``sample(text, alpha, seed)`` -> ids of one segmentation of ``text``, drawn with
    probability proportional to p(segmentation)^alpha."""

    def __init__(self, sp):
        self.sp = sp
        proto = spm_pb2.ModelProto()
        proto.ParseFromString(sp.serialized_model_proto())
        kind = spm_pb2.ModelProto.SentencePiece
        scores = [p.score for p in proto.pieces if p.type == kind.NORMAL]
        top = max(scores)
        self.unk_score = min(scores) - UNK_PENALTY
        self.pieces = {p.piece: (i, p.score if p.type == kind.NORMAL else len(p.piece) * top - 0.1)
                       for i, p in enumerate(proto.pieces) if p.type in (kind.NORMAL, kind.USER_DEFINED)}
        self.prefixes = {p[:k] for p in self.pieces for k in range(1, len(p) + 1)}  # SentencePiece's trie

    def lattice(self, text: str) -> list[list[tuple[int, int, float]]]:
        """``ends[e]``: the nodes (start, id, score) that end at character e of ``text``."""
        ends: list[list[tuple[int, int, float]]] = [[] for _ in range(len(text) + 1)]
        unk = self.sp.unk_id()
        for s in range(len(text)):
            single = False
            for e in range(s + 1, len(text) + 1):
                if text[s:e] not in self.prefixes:
                    break
                node = self.pieces.get(text[s:e])
                if node is not None:
                    ends[e].append((s, node[0], node[1]))
                    single = single or e == s + 1
            if not single:
                ends[s + 1].append((s, unk, self.unk_score))
        return ends

    def sample(self, text: str, alpha: float, seed: int) -> list[int]:
        rng = random.Random(seed)
        ends = self.lattice(self.sp.normalize(text))
        forward = [0.0] + [-math.inf] * (len(ends) - 1)  # log of the summed weights up to each position
        for e in range(1, len(ends)):
            for s, _, score in ends[e]:
                forward[e] = _log_add(forward[e], forward[s] + alpha * score)
        ids: list[int] = []
        e = len(ends) - 1
        while e > 0:
            weights = [math.exp(forward[s] + alpha * score - forward[e]) for s, _, score in ends[e]]
            s, i, _ = ends[e][_draw(weights, rng)]
            if not (ids and i == ids[-1] == self.sp.unk_id()):
                ids.append(i)
            e = s
        return ids[::-1]


def _draw(weights: list[float], rng: random.Random) -> int:
    """An index drawn with probability proportional to ``weights``."""
    u, total = rng.random() * sum(weights), 0.0
    for k, w in enumerate(weights):
        total += w
        if u < total:
            return k
    return len(weights) - 1
