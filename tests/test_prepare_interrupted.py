"""QA round 4: stopping `prepare`."""
import os
import time

import pytest

from conftest import GPT_TINY


def test_ctrl_c_stops_prepare_workers_at_once(tmp_path):
    """Ctrl-C during `prepare --workers N` waited for every shard already handed to the workers
    (2 per worker) before it exited: 40 s on a 20 MB corpus. The workers are stopped at once: no
    shard handed out before the interrupt is written after it."""
    from tqdm import tqdm

    from nety_jax.config import load_config
    from nety_jax.data.tokenizer import WordTokenizer
    from nety_jax.models import get_model
    from nety_jax.training.prepare_data import _run_jobs

    cfg = load_config(GPT_TINY, ["data.tokenizer=word", "data.vocab_size=20"])
    task = get_model(cfg.model).task
    WordTokenizer.build(["le chat dort."], 20).save(str(tmp_path))
    paths = [str(tmp_path / f"train-{k:05d}.arrayrecord") for k in range(3)]

    def jobs():  # three shards handed out, then Ctrl-C while the parent reads the corpus on
        for k, path in enumerate(paths):
            yield "train", k, ["le chat dort."] * 2000, path
        raise KeyboardInterrupt

    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        _run_jobs(jobs(), 4, task, task.resolved_data(cfg), str(tmp_path), 2, tqdm(disable=True))
    time.sleep(0.5)  # a worker left running would write its shard meanwhile
    assert not [p for p in paths if os.path.exists(p)], f"shards written after Ctrl-C ({time.monotonic() - start:.1f} s)"
