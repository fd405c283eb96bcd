"""Prepared data (`nety-jax prepare`): shards equal the in-memory path batch for batch, each process
reads its own part, damage and mismatches are clear errors, and training on shards resumes exactly."""
import os

import jax
import numpy as np
import pytest

from conftest import GPT_TINY, QUIET, TINY

pytest.importorskip("grain")
pytest.importorskip("array_record")

from nety_jax.config import load_config  # noqa: E402
from nety_jax.data.batching import BatchIterator, LocalBatch, eval_batches  # noqa: E402
from nety_jax.errors import ConfigError, DataError  # noqa: E402
from nety_jax.models import get_model  # noqa: E402
from nety_jax.training.prepare_data import open_prepared, prepare_data  # noqa: E402


def _in_memory(cfg, directory):
    """The raw-file path's datasets, with the prepared directory's tokenizer."""
    task = get_model(cfg.model).task
    tokenizer, _ = open_prepared(cfg, directory)
    corpus = task.read(cfg, task.default_paths(), False)
    return task.encode(cfg, tokenizer, corpus, "raw")


def _prepare(tmp_path_factory, config, overrides, per_shard):
    cfg = load_config(config, overrides)
    out = str(tmp_path_factory.mktemp("prepared") / "data")
    prepare_data(cfg, get_model(cfg.model).task.default_paths(), out, per_shard=per_shard, workers=1, **QUIET)
    return cfg, out


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return _prepare(tmp_path_factory, TINY, ["data.vocab_size=120"], per_shard=700)


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    return _prepare(tmp_path_factory, GPT_TINY, [], per_shard=40)


def _assert_same_batches(a, b, cfg, n=6):
    ita, itb = (BatchIterator(d, cfg.train.batch_size, cfg.train.seed, epoch=1, index=3) for d in (a, b))
    for _ in range(n):
        x, y = next(ita), next(itb)
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_prepared_pairs_equal_the_in_memory_batches(pairs):
    cfg, out = pairs
    _, streamed = open_prepared(cfg, out)
    memory = _in_memory(cfg, out)
    assert len(streamed.train) == len(memory.train) and streamed.truncated == memory.truncated
    _assert_same_batches(streamed.train, memory.train, cfg)
    for x, y in zip(eval_batches(streamed.val, 16, 3), eval_batches(memory.val, 16, 3)):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


@pytest.mark.parametrize("overrides", [[], ["data.stride=7"]])
def test_prepared_text_windows_equal_the_in_memory_ones(text, overrides):
    """One stream across many shards: windows crossing shard and record boundaries are the same."""
    cfg, out = text
    cfg = load_config(GPT_TINY, overrides)
    _, streamed = open_prepared(cfg, out)
    memory = _in_memory(cfg, out)
    assert len(streamed.train) == len(memory.train) and len(streamed.val) == len(memory.val)
    _assert_same_batches(streamed.train, memory.train, cfg)
    np.testing.assert_array_equal(streamed.train.collate(np.arange(len(memory.train)))["tokens"],
                                  memory.train.collate(np.arange(len(memory.train)))["tokens"])


def test_prepared_packed_rows_equal_the_in_memory_ones_within_a_shard(tmp_path_factory):
    cfg, out = _prepare(tmp_path_factory, GPT_TINY, ["data.packing=true"], per_shard=10**6)
    _, streamed = open_prepared(cfg, out)
    memory = _in_memory(cfg, out)
    _assert_same_batches(streamed.train, memory.train, cfg)


def test_each_process_reads_its_part_and_a_resume_on_another_count_continues(pairs):
    """Parts of a global batch, read alone, are the batch's rows padded alike; over an epoch,
    2 processes then (after a resume) 4 read every example once."""
    cfg, out = pairs
    _, data = open_prepared(cfg, out)
    full = BatchIterator(data.train, 16, 0)
    idx = full.indices(0, 5)
    whole = data.train.collate(idx)
    parts = [data.train.collate(idx, (p, 2)) for p in range(2)]
    for k in whole:
        np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), whole[k])
    read, epoch = [], [full.indices(0, i) for i in range(full.batches_per_epoch)]
    its = [BatchIterator(data.train, 16, 0, part=(p, 2)) for p in range(2)]
    for it in its:  # spy on the records each process reads
        it.data = _Spy(data.train, read)
    half = len(epoch) // 2
    for _ in range(half):
        assert all(isinstance(next(it), LocalBatch) for it in its)
    position = its[0].state()
    its = [BatchIterator(_Spy(data.train, read), 16, 0, **position, part=(p, 4)) for p in range(4)]
    for _ in range(len(epoch) - half):
        for it in its:
            next(it)
    assert sorted(read) == sorted(np.concatenate(epoch).tolist())  # each example of the epoch once


class _Spy:
    reads_parts = True

    def __init__(self, data, read):
        self.data, self.read = data, read

    def __len__(self):
        return len(self.data)

    def lengths(self, idx):
        return self.data.lengths(idx)

    def collate(self, idx, part=(0, 1)):
        from nety_jax.data.streamed import part_of
        self.read += part_of(idx, part).tolist()
        return self.data.collate(idx, part)


def _copy(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_a_damaged_shard_names_the_shard_and_record(pairs, tmp_path):
    cfg, out = pairs
    flipped = _copy(out, str(tmp_path / "flipped"))
    path = os.path.join(flipped, "train-00000.arrayrecord")
    raw = bytearray(open(path, "rb").read())
    raw[len(raw) // 3] ^= 0xFF
    open(path, "wb").write(bytes(raw))
    _, data = open_prepared(cfg, flipped)
    with pytest.raises(DataError, match=r"train-00000\.arrayrecord: (record \d+: damaged|damaged|.*unreadable)"):
        data.train.collate(np.arange(len(data.train)))
    cut = _copy(out, str(tmp_path / "cut"))
    path = os.path.join(cut, "train-00001.arrayrecord")
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[: len(raw) // 2])
    _, data = open_prepared(cfg, cut)
    with pytest.raises(DataError, match=r"train-00001\.arrayrecord: damaged"):
        data.train.collate([int(np.flatnonzero(np.asarray(data.train.order) == 750)[0])])  # record 750


def test_a_directory_prepared_with_another_config_is_refused_with_the_field(pairs):
    _, out = pairs
    with pytest.raises(ConfigError, match=r"data\.max_src_len=24.*has 20"):
        open_prepared(load_config(TINY, ["data.vocab_size=120", "data.max_src_len=20"]), out)
    with pytest.raises(ConfigError, match="prepared for 'seq2seq'"):
        open_prepared(load_config(GPT_TINY), out)


def test_prepare_never_writes_over_what_it_did_not_write(tmp_path, capsys):
    from nety_jax.cli import main
    (tmp_path / "mine.txt").write_text("keep me")
    assert main(["prepare", "--config", TINY, "--data", str(tmp_path / "x.jsonl"), "--out", str(tmp_path)]) == 2
    assert "nety-jax did not write" in capsys.readouterr().err
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_training_on_prepared_data_resumes_exactly(text, tmp_path):
    """Stopped at step 2 and resumed to 4 equals 4 straight steps, on streamed shards (a constant
    schedule: the stop at 2 is a run of 2 steps)."""
    from nety_jax.serving.pretrained import load_pretrained
    from nety_jax.training.loop import train
    cfg, out = text

    def run(workdir, steps):
        c = load_config(GPT_TINY, [f"train.steps={steps}", "train.checkpoint_every=2",
                               "train.eval_every=1000", "train.log_every=2", "model.dropout=0.1",
                               "train.schedule=constant", "train.bleu_samples=0"])
        return train(c, str(workdir), out, **QUIET)

    run(tmp_path / "straight", 4)
    run(tmp_path / "resumed", 2)
    assert run(tmp_path / "resumed", 4)["start_step"] == 2
    a, b = (jax.device_get(load_pretrained(str(tmp_path / w), warn=lambda *_: None).variables)
            for w in ("straight", "resumed"))
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_the_prefetcher_yields_the_same_batches_and_the_consumed_position(pairs):
    """Batches made ahead in a thread are the iterator's; a checkpoint's position is that of the
    batches handed out, not of those made ahead."""
    from nety_jax.data.prefetch import Prefetcher
    cfg, out = pairs
    _, data = open_prepared(cfg, out)
    plain, ahead = BatchIterator(data.train, 16, 0, index=5), Prefetcher(BatchIterator(data.train, 16, 0, index=5))
    for i in range(4):
        x, y = next(plain), next(ahead)
        assert all(np.array_equal(x[k], y[k]) for k in x)
        assert ahead.state() == plain.state() == {"epoch": 0, "index": 6 + i}
    ahead.close()


def test_a_run_with_another_tokenizer_is_refused(pairs, text):
    from nety_jax.data.tokenizer import load_tokenizer
    from nety_jax.errors import CheckpointError
    cfg, out = pairs
    open_prepared(cfg, out, load_tokenizer(out), "runs/same")  # the same tokenizer: accepted
    with pytest.raises(CheckpointError, match="prepared with another tokenizer than runs/x"):
        open_prepared(cfg, out, load_tokenizer(text[1]), "runs/x")


def test_the_command_with_worker_processes_writes_what_one_process_writes(text, tmp_path, capsys):
    """`nety-jax prepare` over 2 spawned workers: the same shards, byte for byte (their digests),
    as one process writes."""
    from nety_jax.cli import main
    from nety_jax.data.shards import fingerprint, read_manifest
    from nety_jax.data.text import default_text_path
    out = str(tmp_path / "data")
    assert main(["prepare", "--config", GPT_TINY, "--text", default_text_path(), "--out", out, "--workers", "2",
                 "--shard-size", "40", "--no-progress"]) == 0
    assert f"prepared {out}: train" in capsys.readouterr().out
    mine, theirs = read_manifest(out), read_manifest(text[1])
    assert len(mine["splits"]["train"]["shards"]) > 2
    assert fingerprint(mine) == fingerprint(theirs) and mine["splits"] == theirs["splits"]


def test_a_given_tokenizer_file_is_the_one_the_shards_use(text, tmp_path):
    """`--tokenizer FILE` (a SentencePiece model): no tokenizer is trained; the manifest's digest is
    the given tokenizer's."""
    from nety_jax.data.shards import read_manifest
    cfg, out = text
    mine = str(tmp_path / "data")
    prepare_data(cfg, get_model(cfg.model).task.default_paths(), mine, tokenizer_from=os.path.join(out, "tokenizer.model"),
                 per_shard=10**6, workers=1, **QUIET)
    assert read_manifest(mine)["tokenizer"] == read_manifest(out)["tokenizer"]
    with pytest.raises(DataError, match="--tokenizer nowhere: not found"):
        prepare_data(cfg, [], str(tmp_path / "other"), tokenizer_from="nowhere", workers=1, **QUIET)


def _flip(directory, name, at=1 / 3):
    path = os.path.join(directory, name)
    raw = bytearray(open(path, "rb").read())
    raw[int(len(raw) * at)] ^= 0xFF
    open(path, "wb").write(bytes(raw))


def _cut(directory, name):
    path = os.path.join(directory, name)
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[: len(raw) // 2])


def test_skip_bad_skips_and_counts_damaged_pair_records(pairs, tmp_path):
    """--skip-bad over a flipped byte (shard 0) and a truncated shard (shard 1): the batch keeps its
    shape, a skipped pair has no target token (no loss), every other row is the intact one, and each
    damaged record is counted once however often it is read."""
    cfg, out = pairs
    bad = _copy(out, str(tmp_path / "bad"))
    _flip(bad, "train-00000.arrayrecord")
    _cut(bad, "train-00001.arrayrecord")
    _, clean = open_prepared(cfg, out)
    _, data = open_prepared(cfg, bad, skip_bad=True)
    idx = np.arange(len(clean.train))
    for _ in range(2):
        got, want = data.train.collate(idx), clean.train.collate(idx)
    skipped, records = ~np.any(got["targets"] != 0, axis=1), np.asarray(data.train.order)[idx]
    assert skipped[(records >= 700) & (records < 1400)].all()  # the truncated shard: none can be found
    assert 1 <= skipped[records < 700].sum() < 700
    for k in want:
        np.testing.assert_array_equal(got[k][~skipped], want[k][~skipped])
    assert data.damage.count == skipped.sum()
    assert "train-00001.arrayrecord: damaged" in data.damage.first or "train-00000" in data.damage.first


def test_skip_bad_pads_a_damaged_chunk_of_a_token_stream(text, tmp_path):
    cfg, out = text
    bad = _copy(out, str(tmp_path / "bad"))
    _flip(bad, "train-00001.arrayrecord", at=1 / 2)
    _, clean = open_prepared(cfg, out)
    _, data = open_prepared(cfg, bad, skip_bad=True)
    idx = np.arange(len(clean.train))
    got, want = data.train.collate(idx)["tokens"], clean.train.collate(idx)["tokens"]
    differ = got != want
    assert differ.any() and (got[differ] == 0).all()  # the damaged chunk's tokens are pads, the rest intact
    assert data.damage.count >= 1


def test_training_with_skip_bad_over_a_damaged_shard(text, tmp_path):
    """With --skip-bad, training over a truncated shard trains, says so and counts the skipped records
    (without it, the error of test_a_damaged_shard_names_the_shard_and_record stops the run). The
    config of the resume test above: its compiled step is reused."""
    from nety_jax.data.prefetch import Prefetcher
    from nety_jax.training.loop import train
    cfg, out = text
    bad = _copy(out, str(tmp_path / "bad"))
    _cut(bad, "train-00000.arrayrecord")
    _, strict = open_prepared(cfg, bad)
    with pytest.raises(DataError, match=r"train-00000\.arrayrecord: damaged"):  # raised by the consumer
        batches = Prefetcher(BatchIterator(strict.train, 4, 0))
        for _ in range(batches.batches_per_epoch):
            next(batches)
    c = load_config(GPT_TINY, ["train.steps=2", "train.checkpoint_every=2", "train.eval_every=1000",
                               "train.log_every=2", "model.dropout=0.1", "train.schedule=constant",
                               "train.bleu_samples=0"])
    said = []
    summary = train(c, str(tmp_path / "skip"), bad, skip_bad=True, progress=False, log=said.append)
    assert summary["step"] == 2 and summary["skipped_records"] > 0
    assert any("damaged records of the prepared data" in s for s in said)


def _lines_file(path, lines, repeat):
    with open(path, "w", encoding="utf-8") as f:
        for r in range(repeat):
            f.writelines(f"{r} {line}\n" for line in lines)
    return str(path)


def test_prepare_streams_the_corpus_its_memory_does_not_grow_with_it(text, tmp_path):
    """Python's peak allocation while preparing 4x more text stays that of the smaller corpus
    (shards of 500 lines, one process, the fixture's tokenizer): the corpus is never held.
    Reading it whole, as `train FILE` does, would grow with it."""
    import tracemalloc
    from nety_jax.data.text import default_text_path
    cfg, out = text
    lines = open(default_text_path(), encoding="utf-8").read().splitlines()
    peaks = []
    for repeat in (8, 32):
        src = _lines_file(tmp_path / f"x{repeat}.txt", lines, repeat)
        tracemalloc.start()
        prepare_data(cfg, [src], str(tmp_path / f"p{repeat}"), tokenizer_from=out, per_shard=500, workers=1, **QUIET)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    size = os.path.getsize(tmp_path / "x32.txt") - os.path.getsize(tmp_path / "x8.txt")
    assert peaks[1] - peaks[0] < size / 4, (peaks, size)


def test_prepare_names_the_bad_line_and_trains_the_tokenizer_the_raw_path_trains(pairs, tmp_path):
    from nety_jax.data.shards import read_manifest, tokenizer_digest
    from nety_jax.data.tokenizer import load_tokenizer
    from nety_jax.training.setup import build_tokenizer
    cfg, out = pairs
    task = get_model(cfg.model).task
    with tempfile_dir(tmp_path / "tok") as tok:  # prepare's tokenizer (trained in a stream) is read's
        build_tokenizer(cfg, task.read(cfg, task.default_paths(), False).texts).save(tok)
        assert tokenizer_digest(tok) == read_manifest(out)["tokenizer"]
    bad = tmp_path / "bad.jsonl"
    good = '{"input": "bonjour", "target": "salut"}\n'
    bad.write_text(good * 30 + "{oops\n" + good * 30)
    with pytest.raises(DataError, match=r"bad\.jsonl:31: invalid JSON"):
        prepare_data(cfg, [str(bad)], str(tmp_path / "strict"), tokenizer_from=out, workers=1, **QUIET)
    said = []
    manifest = prepare_data(cfg, [str(bad)], str(tmp_path / "skip"), tokenizer_from=out, skip_bad=True, workers=1,
                            progress=False, log=said.append)
    assert manifest["skipped"] == 1 and "skipped 1 bad lines" in said[0] and "bad.jsonl:31" in said[0]
    assert sum(s["examples"] for s in manifest["splits"].values()) == 60
    assert load_tokenizer(str(tmp_path / "skip")).vocab_size == load_tokenizer(out).vocab_size


def tempfile_dir(path):
    import contextlib
    os.makedirs(path)
    return contextlib.nullcontext(str(path))


def test_a_streamed_epoch_plan_holds_one_window(pairs):
    """A streamed epoch's only per-example memory: the window of 50 batches being handed out (the
    plan of earlier versions held the whole epoch, 4 bytes an example); each example once."""
    cfg, out = pairs
    _, data = open_prepared(cfg, out)
    it = BatchIterator(data.train, 16, 0)
    epoch = np.stack([it.indices(0, i) for i in range(it.batches_per_epoch)])
    assert it._cached[1].shape[0] <= BatchIterator.WINDOW and it._cached[1].shape[1] == 16
    assert len(np.unique(epoch)) == epoch.size
