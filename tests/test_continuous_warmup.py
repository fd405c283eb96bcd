"""Start-up warm-up (``nety-jax serve``, ``ContinuousEngine.warm_up``): a warmed server compiles
nothing when requests of every prompt bucket and batch size arrive."""
import contextlib
import dataclasses
import logging
import threading

import jax

from nety_jax.data.prompts import bucket
from nety_jax.serving.continuous import ContinuousEngine
from nety_jax.serving.engine import Job, PretrainedBackend, Row
from nety_jax.serving.pretrained import load_pretrained


@contextlib.contextmanager
def counted_compiles():
    """A list that counts the programs JAX compiles inside the block (any thread)."""
    seen = []

    class Handler(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("Compiling"):
                seen.append(record.getMessage()[:120])
    handler, logger = Handler(), logging.getLogger("jax")
    logger.addHandler(handler)
    before = jax.config.jax_log_compiles
    jax.config.update("jax_log_compiles", True)
    try:
        yield seen
    finally:
        jax.config.update("jax_log_compiles", before)
        logger.removeHandler(handler)


def test_a_warmed_server_compiles_nothing_for_any_prompt_bucket_or_batch(trained_gpt):
    pre = load_pretrained(trained_gpt[0])
    backend = PretrainedBackend(pre)
    # prompt buckets of 24 tokens (of the model's 63): 3 buckets, a few programs, the same code path
    backend.data_cfg = dataclasses.replace(backend.data_cfg, bucket_multiple=24)
    # 3 slots: a slot state of this shape is this test's own, so its programs are not compiled yet
    engine = ContinuousEngine(backend, slots=3, chunk=2)
    longest, multiple = engine.runner.source_len, backend.data_cfg.bucket_multiple
    lengths = sorted({min(bucket(n, multiple), longest) for n in range(1, longest + 1)})
    assert len(lengths) == 3, lengths
    with counted_compiles() as warming:
        runs = engine.warm_up()
    assert runs == len(lengths) * 3  # each prompt bucket x batch buckets 1, 2, 4
    assert warming, "the warm-up compiled nothing: the test would prove nothing"
    done = []
    with counted_compiles() as serving:
        for n in lengths:  # one request of each bucket alone, then 1-3 rows admitted together
            for rows in (1, 3, 2):
                finished = threading.Event()
                job = Job([Row([5] * n, 0.8, 0, 1.0, 3, k) for k in range(rows)],
                          lambda kind, payload, f=finished: kind != "delta" and (done.append(kind), f.set()))
                engine.submit(job)
            assert finished.wait(120)
    engine.close()
    assert serving == [], serving
    assert len(done) == 3 * len(lengths) and set(done) == {"done"}
