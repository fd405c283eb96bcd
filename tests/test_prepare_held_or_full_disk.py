"""QA round 3: prepared data replaced under a training that streams from it."""
import os

import pytest

from conftest import GPT_TINY, run_main

pytest.importorskip("array_record")


def test_prepare_overwrite_of_a_directory_a_training_streams_from_is_refused(tmp_path):
    """`prepare --overwrite DIR` while `train --text DIR` ran replaced the shards under the run (it
    went on reading other data than its checkpoints record). The training holds the directory
    (a shared kernel lock) and the overwrite is one line, nothing changed; once it ends, allowed."""
    import nety_jax
    from nety_jax.config import load_config
    corpus = tmp_path / "t.txt"
    corpus.write_text("".join(f"le chien {i} dort.\n" for i in range(60)), encoding="utf-8")
    out = tmp_path / "p"
    argv = ["prepare", "--config", GPT_TINY, "--set", "data.vocab_size=60", "--set", "data.seq_len=16",
            "--out", out, "--workers", "1", "--no-progress", "--shard-size", "30", "--text", corpus]
    assert run_main(*argv).returncode == 0, run_main(*argv).stderr
    before = {name: os.path.getmtime(out / name) for name in os.listdir(out)}
    during = []

    def log(line):  # the training's log, while it holds the directory
        if line.startswith("data:") and not during:
            during.append(run_main(*argv, "--overwrite"))

    cfg = load_config(GPT_TINY, ["data.vocab_size=60", "data.seq_len=16", "train.steps=1", "train.warmup_steps=0",
                                 "train.batch_size=4", "train.eval_every=100", "train.checkpoint_every=100"])
    nety_jax.train(cfg, str(tmp_path / "run"), str(out), log=log, progress=False)
    result = during[0]
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "is in use (a running training streams from it or trains in it)" in result.stderr
    assert {name: os.path.getmtime(out / name) for name in os.listdir(out)} == before
    assert run_main(*argv, "--overwrite").returncode == 0  # the training has ended: replaced


def test_a_disk_that_fills_during_prepare_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    """ArrayRecord reports a failed write as a RuntimeError ("write() failed: No space left on
    device; writing ..."): `prepare` onto a disk that filled midway ended in a traceback. It is an
    OSError naming the shard now, which the output guard turns into one line; nothing is left."""
    from array_record.python import array_record_module

    real = array_record_module.ArrayRecordWriter

    class FillingDisk(real):
        def close(self):
            raise RuntimeError(f"write() failed: No space left on device; writing {self.path}; at byte 4096")

        def __init__(self, path, options):
            super().__init__(path, options)
            self.path = path

    monkeypatch.setattr(array_record_module, "ArrayRecordWriter", FillingDisk)
    corpus = tmp_path / "t.txt"
    corpus.write_text("".join(f"le chien {i} dort.\n" for i in range(40)), encoding="utf-8")
    result = run_main("prepare", "--config", GPT_TINY, "--set", "data.vocab_size=60", "--out", tmp_path / "p",
                      "--workers", "1", "--no-progress", "--text", corpus)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "--out" in result.stderr and "writing failed (No space left on device); nothing was changed" \
        in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["t.txt"]
