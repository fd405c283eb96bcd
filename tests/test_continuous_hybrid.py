"""Continuous batching of the hybrid (models/hybrid's slot prefill): each source is encoded at its
own prompt bucket, as ``generate`` encodes it alone, and its memory padded to the slot layout."""
import threading

import jax

from nety_jax.models import get_model
from nety_jax.serving.continuous import ContinuousEngine
from nety_jax.serving.engine import Job, PretrainedBackend, Row
from nety_jax.serving.pretrained import Pretrained, load_pretrained

# three prompt buckets on tiny.yaml (8, 16 and 24 source tokens: 24 is the slot layout's width),
# greedy and seeded rows
PROMPTS = ["Oui.", "Bonjour !", "Merci beaucoup !"]
SETTINGS = [(0.0, 0, 1.0, 7, 1), (0.9, 0, 1.0, 9, 2), (0.8, 5, 0.9, 5, 3)]


def test_padded_pooling_and_copy_rows_give_the_tokens_they_give_alone(trained_run):
    """NETY's pooling at the last PADDED position makes the memory depend on the width a source
    is padded to, and the copy head reads the memory too: a row in the slots equals ``generate``
    alone only if its source is encoded at its own bucket (random weights: any weights must)."""
    base = load_pretrained(trained_run)
    cfg = base.config.replace_model(pooling="last_padded", copy=True)
    pre = Pretrained(cfg, base.tokenizer, get_model(cfg.model).init(jax.random.PRNGKey(3)))
    rows = [Row(pre.model.prompts.ids(pre.tokenizer, p, cfg.data), *s) for p, s in zip(PROMPTS, SETTINGS)]
    assert len({-(-len(r.ids) // cfg.data.bucket_multiple) for r in rows}) == 3, [len(r.ids) for r in rows]
    engine = ContinuousEngine(PretrainedBackend(pre), slots=2, chunk=3)
    done = [[] for _ in rows]
    events = [threading.Event() for _ in rows]
    for row, out, event in zip(rows, done, events):  # three rows through two slots
        engine.submit(Job([row], lambda kind, payload, o=out, e=event: (o.append((kind, payload)), e.set())))
    assert all(event.wait(120) for event in events)
    engine.close()
    for [(kind, (got,))], (t, k, p, n, seed), prompt in zip(done, SETTINGS, PROMPTS):
        alone = pre.generate_ids([prompt], seed=[seed], temperature=[t], top_k=[k], top_p=[p], max_new_tokens=[n])
        length = int(alone["lengths"][0])
        ids = [int(x) for x in alone["tokens"][0][:length]]
        ended = ids[-1:] == [2]  # <eos>
        assert (got.text, got.tokens) == (pre.tokenizer.decode(ids[: length - ended]), length), (prompt, ids)
