"""QA: prepared shards that are not the ones their manifest lists, windows cut another way on
resume, and `--overwrite` over an output holding files its writer did not write."""
import json
import os
import re
import shutil

import numpy as np
import pytest

from conftest import GPT_TINY, QUIET, TINY, run_main

pytest.importorskip("array_record")

from nety_jax.config import load_config  # noqa: E402
from nety_jax.errors import DataError  # noqa: E402
from nety_jax.training.prepare_data import open_prepared, prepare_data  # noqa: E402

def _pairs(shift: int) -> list:
    """Short pairs (no cut at data.max_src_len) whose lengths vary with ``shift``."""
    return [{"input": " ".join(["le chat"] * (1 + (i + shift) % 4)),
             "target": " ".join(["il dort"] * (1 + (i + 2 * shift) % 3))} for i in range(120)]


def _pairs_file(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def two_prepares(tmp_path_factory):
    """Two pair directories of 120 pairs each (shards of 40), the second with the first's tokenizer:
    same shard names, record counts and tokenizer, other pairs."""
    root = tmp_path_factory.mktemp("qa_shards")
    cfg = load_config(TINY, ["data.vocab_size=60"])
    a, b = str(root / "a"), str(root / "b")
    prepare_data(cfg, [_pairs_file(root / "a.jsonl", _pairs(0))], a, per_shard=40, workers=1, **QUIET)
    prepare_data(cfg, [_pairs_file(root / "b.jsonl", _pairs(1))], b, tokenizer_from=a, per_shard=40, workers=1, **QUIET)
    return cfg, a, b


def _read_all(cfg, directory):
    _, data = open_prepared(cfg, directory)
    return data.train.collate(np.arange(len(data.train)))


def test_a_shard_of_another_prepare_is_refused_naming_it(two_prepares, tmp_path):
    """Its records have intact checksums: before the check it trained on the other pairs silently."""
    cfg, a, b = two_prepares
    mixed = str(tmp_path / "mixed")
    shutil.copytree(a, mixed)
    shutil.copy(os.path.join(b, "train-00001.arrayrecord"), os.path.join(mixed, "train-00001.arrayrecord"))
    _read_all(cfg, a)  # the intact directory reads
    with pytest.raises(DataError, match="train-00001.arrayrecord: is not the shard prepared.json lists"):
        _read_all(cfg, mixed)
    # a manifest written before shards recorded their size and first record: the records' lengths,
    # which prepare recorded per example, still tell them apart
    with open(os.path.join(mixed, "prepared.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    for shard in manifest["splits"]["train"]["shards"]:
        shard.pop("bytes"), shard.pop("first_crc")
    with open(os.path.join(mixed, "prepared.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f)
    with pytest.raises(DataError, match="records that are not the pairs its lengths describe"):
        _read_all(cfg, mixed)


def test_a_config_with_another_validation_split_is_refused(two_prepares):
    """The split is made at prepare: data.val_fraction=0.5 trained on the prepared 5% silently."""
    from nety_jax.errors import ConfigError
    cfg, a, _ = two_prepares
    with pytest.raises(ConfigError, match="prepared with data.val_fraction=0.05 .*the config has 0.5"):
        open_prepared(load_config(TINY, ["data.vocab_size=60", "data.val_fraction=0.5"]), a)
    open_prepared(load_config(TINY, ["data.vocab_size=60", "data.val_fraction=0.05"]), a)  # the same: fine


def test_windows_cut_another_way_are_other_training_data(tmp_path):
    """Prepared text: data.seq_len and data.stride are cut at training, so a resume with others
    must restart the data order (as on the raw text) rather than continue at the old position."""
    cfg = load_config(GPT_TINY, ["data.vocab_size=100"])
    text = tmp_path / "t.txt"
    text.write_text("".join(f"le chat {i} mange la souris {i % 3}.\n" for i in range(60)), encoding="utf-8")
    out = str(tmp_path / "p")
    prepare_data(cfg, [str(text)], out, per_shard=30, workers=1, **QUIET)
    prints = {(s, st): open_prepared(load_config(GPT_TINY, ["data.vocab_size=100", f"data.seq_len={s}",
                                                            f"data.stride={st}"]), out)[1].fingerprint
              for s, st in ((32, 16), (16, 16), (32, 8))}
    assert len(set(prints.values())) == 3, prints
    assert open_prepared(cfg, out)[1].fingerprint == prints[(32, 16)]


def test_overwrite_never_deletes_a_file_added_to_an_earlier_output(tmp_path):
    """`prepare --overwrite` replaced the whole directory: a corpus or notes put there were lost."""
    corpus = tmp_path / "t.txt"
    corpus.write_text("".join(f"le chien {i} dort.\n" for i in range(40)), encoding="utf-8")
    out = tmp_path / "p"
    argv = ["prepare", "--config", GPT_TINY, "--set", "data.vocab_size=60", "--out", out, "--workers", "1",
            "--no-progress", "--shard-size", "20"]
    assert run_main(*argv, "--text", corpus).returncode == 0
    shutil.copy(corpus, out / "corpus.txt")  # the user keeps the corpus beside its shards
    before = sorted(os.listdir(out))
    result = run_main(*argv, "--text", out / "corpus.txt", "--overwrite")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "holds corpus.txt, which prepare did not write" in result.stderr
    assert sorted(os.listdir(out)) == before and (out / "corpus.txt").read_text() == corpus.read_text()
    os.remove(out / "corpus.txt")
    assert run_main(*argv, "--text", corpus, "--overwrite").returncode == 0  # its own output: replaced


def test_overwrite_of_runs_and_legacy_exports_keeps_foreign_files(tmp_path):
    """The unsealed outputs (an import, a quantized run) and exports made before markers: only
    their writer's own files may be replaced."""
    from nety_jax.errors import OutputError
    from nety_jax.runs import guard
    from nety_jax.runs.manifest import write_marker
    run = tmp_path / "imported"
    (run / "checkpoints" / "0").mkdir(parents=True)
    (run / "checkpoints" / "0" / "data").write_text("x")
    for name in ("config.yaml", "tokenizer.json", "hf_tokenizer.json"):
        (run / name).write_text("x")
    write_marker(str(run), "run", "import-hf", sealed=False)
    guard.claim(str(run), "import-hf", overwrite=True)  # its own files only: replaceable
    (run / "my_eval.py").write_text("print(1)\n")
    with pytest.raises(OutputError, match="holds my_eval.py, which import-hf did not write"):
        guard.claim(str(run), "import-hf", overwrite=True)
    export = tmp_path / "legacy_export"
    export.mkdir()
    for name in ("generate.bin", "export.json", "variables.npz", "config.yaml"):
        (export / name).write_text("x")
    guard.claim(str(export), "export", overwrite=True)
    (export / "results.csv").write_text("1,2\n")
    with pytest.raises(OutputError, match="holds results.csv"):
        guard.claim(str(export), "export", overwrite=True)


def test_damaged_side_files_of_a_prepared_directory_are_one_error(two_prepares, tmp_path):
    """A truncated or misshapen lengths / order file or a manifest of another shape was a
    traceback (ValueError, IndexError, KeyError) from deep inside the batcher."""
    cfg, a, _ = two_prepares

    def damaged(name, damage):
        d = tmp_path / name
        shutil.copytree(a, d)
        damage(d)
        return str(d)

    def truncate(path):
        path.write_bytes(path.read_bytes()[:100])

    def manifest(d, edit):
        m = json.loads((d / "prepared.json").read_text())
        edit(m)
        (d / "prepared.json").write_text(json.dumps(m))

    cases = {"lengths": (lambda d: truncate(d / "train.lengths.npy"), "train.lengths.npy: unreadable"),
             "order": (lambda d: np.save(d / "train.order.npy", np.arange(7)), "train.order.npy: holds int64[7]"),
             "order values": (lambda d: np.save(d / "train.order.npy", np.load(d / "train.order.npy") + 1000),
                              "its order file names records it does not have"),
             "shards": (lambda d: manifest(d, lambda m: m["splits"]["train"].pop("shards")),
                        "prepared.json: splits.train.shards is not a list"),
             "records": (lambda d: manifest(d, lambda m: m["splits"]["val"]["shards"][0].update(records="3")),
                         "prepared.json: splits.val.shards[0] is not a shard")}
    for name, (damage, message) in cases.items():
        with pytest.raises(DataError, match=re.escape(message)):
            _read_all(cfg, damaged(name.replace(" ", "_"), damage))


def test_prepare_with_a_tokenizer_of_another_kind_than_the_config_is_refused(two_prepares, tmp_path):
    """`prepare --tokenizer RUN` with a word (or hf) tokenizer under a sentencepiece config recorded
    data.tokenizer=sentencepiece for shards encoded otherwise: the run then claimed a tokenizer it
    did not have (export-hf refused it, `--init-from` of the real one was refused)."""
    from nety_jax.data.tokenizer import WordTokenizer
    from nety_jax.errors import ConfigError
    cfg, a, _ = two_prepares
    word = tmp_path / "word_run"
    word.mkdir()
    WordTokenizer.build([p["input"] + " " + p["target"] for p in _pairs(0)], 50).save(str(word))
    source = _pairs_file(tmp_path / "p.jsonl", _pairs(0))
    with pytest.raises(ConfigError, match="is a word tokenizer, the config has data.tokenizer='sentencepiece'"):
        prepare_data(cfg, [source], str(tmp_path / "out"), tokenizer_from=str(word), workers=1, **QUIET)
    lower = load_config(TINY, ["data.vocab_size=60", "data.lowercase=true"])
    with pytest.raises(ConfigError, match="lowercases=False, the config has data.lowercase=True"):
        prepare_data(lower, [source], str(tmp_path / "out"), tokenizer_from=a, workers=1, **QUIET)
    assert not (tmp_path / "out").exists()


def test_prepare_stops_with_one_error_when_a_worker_dies(tmp_path):
    """A worker process that died (`kill -9`, the out-of-memory killer) left `prepare` waiting for
    its shard forever: multiprocessing.Pool replaced the worker and lost the task. Here the workers
    die at start-up (their tokenizer directory is gone), which hung the Pool the same way."""
    import threading
    from tqdm import tqdm
    from nety_jax.models import get_model
    from nety_jax.training.prepare_data import _run_jobs
    cfg = load_config(GPT_TINY)
    task = get_model(cfg.model).task
    jobs = [("train", k, ["le chat dort."] * 3, str(tmp_path / f"train-{k:05d}.arrayrecord")) for k in range(4)]
    outcome = []

    def run():
        try:
            _run_jobs(iter(jobs), len(jobs), task, task.resolved_data(cfg), str(tmp_path / "gone"), 2,
                      tqdm(disable=True))
        except Exception as e:  # noqa: BLE001 - the outcome is what the test checks
            outcome.append(e)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "prepare hung after its workers died"
    assert outcome and isinstance(outcome[0], DataError) and "a prepare worker process died" in str(outcome[0])


def test_prepare_refuses_a_negative_worker_count(tmp_path):
    """`--workers -1` was taken silently as one process."""
    (tmp_path / "t.txt").write_text("le chat dort.\n" * 20, encoding="utf-8")
    result = run_main("prepare", "--config", GPT_TINY, "--text", tmp_path / "t.txt", "--out", tmp_path / "p",
                      "--workers", "-1")
    assert result.returncode == 2 and "--workers=-1 must be >= 0" in result.stderr, result.stderr
    assert not (tmp_path / "p").exists()
