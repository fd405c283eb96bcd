"""Shared machinery of scripts/bench_quality.py: several seeds trained as one vmapped program,
greedy scoring, bits per character, and NETY's own training recipe in PyTorch.

Seeds share the batch order (the seed changes the initialisation and dropout), so a
configuration is compiled once and its seeds run as one batched program.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from nety_jax.config import Config, load_config
from nety_jax.data.batching import BatchIterator
from nety_jax.data.pairs import encode_pairs
from nety_jax.data.prompts import decode_replies
from nety_jax.models import get_model
from nety_jax.tasks.seq2seq import greedy_replies
from nety_jax.training.setup import build_tokenizer
from nety_jax.training.steps import create_train_state, train_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
CONFIGS = os.path.join(ROOT, "configs")


def config(base: str, overrides: list[str]) -> Config:
    return load_config(os.path.join(CONFIGS, base), overrides)


@dataclass
class SeedRun:
    """A configuration trained for several seeds at once (stacked states)."""
    cfg: Config
    model: object
    tokenizer: object
    states: object
    seeds: list[int]
    seconds: float = 0.0
    curve: list[tuple[int, list[float]]] = field(default_factory=list)
    _nll: object = None

    def variables(self, i: int) -> dict:
        return jax.tree_util.tree_map(lambda x: x[i], self.states.variables)

    def nll_sum(self, variables: dict, batch: dict):
        """Summed NLL of a batch's targets (one jitted function per run, not one per call)."""
        if self._nll is None:
            self._nll = jax.jit(lambda v, b: self.model.loss_sums(v, b, train=False, label_smoothing=0.0)[0]["nll_sum"])
        return self._nll(variables, batch)


def train_seeds(cfg: Config, datasets, seeds: list[int], tokenizer=None, probe=None,
                probe_every: int = 0) -> SeedRun:
    """Trains ``cfg`` for ``cfg.train.steps`` steps, one model per seed, as ONE vmapped program.

    ``datasets``: one list of pairs for all seeds, or one list per seed whose examples have
    the same token lengths row by row (the synthetic tasks of one draw of strings), so every
    step stacks equally shaped batches. ``probe(run) -> [score per model]`` is recorded every
    ``probe_every`` steps (its time is not counted)."""
    per_model = isinstance(datasets[0], list)
    sets = datasets if per_model else [datasets]
    tokenizer = tokenizer or build_tokenizer(cfg, [t for pairs in sets for p in pairs for t in p])
    cfg = cfg.replace_model(vocab_size=tokenizer.vocab_size)
    model = get_model(cfg.model)
    data = [encode_pairs(pairs, tokenizer, cfg.data, training=True) for pairs in sets]
    keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
    start = time.perf_counter()
    states = jax.jit(jax.vmap(lambda k: create_train_state(model, cfg.train, k)))(keys)
    step = jax.jit(jax.vmap(lambda s, b: train_step(s, b, model=model, tcfg=cfg.train),
                            in_axes=(0, 0 if per_model else None)), donate_argnums=0)
    run = SeedRun(cfg, model, tokenizer, states, list(seeds))
    order = BatchIterator(_Indices(data[0]), cfg.train.batch_size, seed=0)
    for i in range(1, cfg.train.steps + 1):
        idx = next(order)
        batch = [d.collate(idx) for d in data]
        batch = jax.tree_util.tree_map(lambda *x: np.stack(x), *batch) if per_model else batch[0]
        run.states, _ = step(run.states, batch)
        if probe is not None and probe_every and (i % probe_every == 0 or i == cfg.train.steps):
            jax.block_until_ready(run.states.params)
            run.seconds += time.perf_counter() - start
            run.curve.append((i, probe(run)))
            start = time.perf_counter()
    jax.block_until_ready(run.states.params)
    run.seconds += time.perf_counter() - start
    return run


class _Indices:
    """A dataset view whose batches are their own indices (one order for stacked datasets)."""

    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def length(self, i):
        return self.data.length(i)

    def collate(self, idx):
        return idx


def greedy(run: SeedRun, i: int, sources: list[str], batch: int = 128) -> list[str]:
    """Greedy replies of seed ``i`` to ``sources`` (batched, fixed shapes)."""
    cfg, out = run.cfg, []
    data = encode_pairs([(s, "") for s in sources], run.tokenizer, cfg.data)
    max_new = min(cfg.decode.max_new_tokens, cfg.data.max_tgt_len)
    variables = run.variables(i)
    width = cfg.data.max_src_len  # one shape: one compiled program per model
    for start in range(0, len(sources), batch):
        rows = data.src[start: start + batch]
        src = np.zeros((batch, width), np.int32)
        src_len = np.ones((batch,), np.int32)
        src[:, 0] = rows[0][0]
        for r, s in enumerate(rows):
            src[r, : len(s)], src_len[r] = s, len(s)
        tokens = greedy_replies(run.model, variables, src, src_len, max_new)
        out += decode_replies(run.tokenizer, tokens, len(rows))
    return out


def nll_nats(run: SeedRun, i: int, pairs, batch: int = 64) -> float:
    """Summed negative log-likelihood (nats) of the targets (every token, <eos> included)."""
    data = encode_pairs(pairs, run.tokenizer, run.cfg.data)
    if data.truncated:  # a cut reply would leave its tail's bits out of bits per character
        raise ValueError(f"{data.truncated} scored pairs are longer than data.max_src_len / "
                         f"data.max_tgt_len ({run.cfg.data.max_src_len} / {run.cfg.data.max_tgt_len})")
    variables, total = run.variables(i), 0.0
    for start in range(0, len(data), batch):
        total += float(run.nll_sum(variables, data.collate(np.arange(start, min(start + batch, len(data))))))
    return total


def bits_per_char(nats: float, targets: list[str]) -> float:
    return nats / math.log(2) / sum(len(t) for t in targets)


def text_scores(hyps: list[str], refs: list[str]) -> dict:
    """Case-insensitive corpus BLEU and chrF (NETY's recipe lowercases everything)."""
    import sacrebleu
    from sacrebleu.metrics import CHRF
    hyps, refs = [h.lower() for h in hyps], [r.lower() for r in refs]
    return {"bleu": sacrebleu.corpus_bleu(hyps, [refs]).score,
            "chrf": CHRF().corpus_score(hyps, [refs]).score}


class SpellingModel:
    """Characters of a word a closed-vocabulary model cannot name: a character bigram model
    (add-k smoothing, start and end of word) fitted on the training words. A word model scores
    an unknown word as p(<unk>) times this; it is what makes its bits per character comparable
    with an open-vocabulary (SentencePiece) model's, which spells such words itself."""

    def __init__(self, words, k: float = 0.1):
        self.k, self.pairs, self.context, alphabet = k, {}, {}, set()
        for w in set(words):
            s = "^" + w + "$"
            for a, b in zip(s, s[1:]):
                self.pairs[a, b] = self.pairs.get((a, b), 0) + 1
                self.context[a] = self.context.get(a, 0) + 1
                alphabet.add(b)
        self.symbols = len(alphabet) + 1  # + one for characters never seen

    def nats(self, word: str) -> float:
        s = "^" + word + "$"
        return -sum(math.log((self.pairs.get((a, b), 0) + self.k) /
                             (self.context.get(a, 0) + self.k * self.symbols)) for a, b in zip(s, s[1:]))


# NETY's recipe, in the PyTorch re-creation ------------------------------------------------------

NETY_PAD = 50


class NetyRecipe:
    """NETY's training as published: whitespace word vocabulary of the lowercased text (built,
    as NETY does, on every text it is given: pass the training texts for a fair held-out
    score), both sides padded or cut to 50, Adam lr 1e-4, batch 4, cross-entropy ignoring
    padding. One change, in NETY's favour: targets get <sos> ... <eos> (NETY adds neither, so
    its model could not be scored on a reply's first word or its end, and its generation would
    start from a token it never saw)."""

    def __init__(self, all_texts: list[str], dims: dict, seed: int = 0):
        import torch
        from nety_jax.data.tokenizer import WordTokenizer
        if TESTS not in sys.path:  # NETY re-created in PyTorch is a test reference
            sys.path.append(TESTS)
        from nety_torch_reference import HybridRNNTransformer
        torch.manual_seed(seed)
        self.torch, self.seed = torch, seed
        self.tokenizer = WordTokenizer.build(all_texts, 1 << 30)
        self.model = HybridRNNTransformer(self.tokenizer.vocab_size, **dims)
        self.steps = 0

    def _ids(self, text: str, target: bool) -> list[int]:
        ids = self.tokenizer.encode(text)
        ids = [1] + ids + [2] if target else ids
        return (ids + [0] * NETY_PAD)[:NETY_PAD]

    def _tensor(self, texts, target):
        return self.torch.tensor([self._ids(t, target) for t in texts], dtype=self.torch.long)

    def train(self, pairs, seconds: float, batch: int = 4, lr: float = 1e-4,
              max_steps: int | None = None) -> float:
        """Trains for `seconds` of wall-clock (or until `max_steps`, whichever comes first)."""
        torch = self.torch
        src, tgt = self._tensor([p[0] for p in pairs], False), self._tensor([p[1] for p in pairs], True)
        opt = torch.optim.Adam(self.model.parameters(), lr=lr)
        loss_fn = torch.nn.CrossEntropyLoss(ignore_index=0)
        gen = torch.Generator().manual_seed(self.seed)
        self.model.train()
        start = time.perf_counter()

        def done():
            return time.perf_counter() - start >= seconds or (max_steps is not None and self.steps >= max_steps)

        while not done():
            for idx in torch.randperm(len(pairs), generator=gen).split(batch):
                if len(idx) < 2:  # an epoch's last batch of one row: BatchNorm cannot train on it
                    continue
                logits = self.model(src[idx], tgt[idx, :-1])
                loss = loss_fn(logits.reshape(-1, logits.shape[-1]), tgt[idx, 1:].reshape(-1))
                opt.zero_grad()
                loss.backward()
                opt.step()
                self.steps += 1
                if done():
                    break
        return time.perf_counter() - start

    def nll_nats(self, pairs, batch: int = 64) -> float:
        torch, total = self.torch, 0.0
        self.model.eval()
        with torch.no_grad():
            for s in range(0, len(pairs), batch):
                part = pairs[s: s + batch]
                src, tgt = self._tensor([p[0] for p in part], False), self._tensor([p[1] for p in part], True)
                logits = self.model(src, tgt[:, :-1])
                total += float(torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), tgt[:, 1:].reshape(-1), ignore_index=0,
                    reduction="sum"))
        return total

    def unknown_words(self, texts: list[str]) -> list[str]:
        """The words of ``texts`` outside the vocabulary (scored as <unk>)."""
        return [w for t in texts for w in self.tokenizer.words(t) if w not in self.tokenizer.word_to_idx]

    def open_vocab_nats(self, pairs, spelling: SpellingModel) -> float:
        """NLL of the targets with every unknown word's spelling charged: p(<unk>) * p(spelling)."""
        too_long = [t for _, t in pairs if len(self.tokenizer.words(t)) + 2 > NETY_PAD]
        if too_long:
            raise ValueError(f"{len(too_long)} scored replies are longer than NETY's {NETY_PAD} words")
        extra = sum(spelling.nats(w) for w in self.unknown_words([t for _, t in pairs]))
        return self.nll_nats(pairs) + extra

    def greedy(self, sources: list[str], max_new: int = 40) -> list[str]:
        """NETY's loop (the whole prefix rerun each step), greedy and batched."""
        torch = self.torch
        self.model.eval()
        src = self._tensor(sources, False)
        tgt = torch.ones((len(sources), 1), dtype=torch.long)
        with torch.no_grad():
            for _ in range(max_new):
                nxt = self.model(src, tgt)[:, -1].argmax(-1, keepdim=True)
                tgt = torch.cat([tgt, nxt], 1)
                if bool((tgt == 2).any(1).all()):
                    break
        out = []
        for row in tgt[:, 1:].tolist():
            row = row[: row.index(2)] if 2 in row else row
            out.append(self.tokenizer.decode(row))
        return out
