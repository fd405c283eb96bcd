"""The writers' guard (runs/guard.py): every writer x every kind of existing target.

Refused cases run the real command in-process and must exit 2 with one line naming
the path, before any work, leaving every target byte for byte as it was; accepted
cases are checked through ``guard.claim`` (the command would then do its work).
"""
import hashlib
import json
import os
import re
import shutil

import pytest
import yaml

from nety_jax.cli import main
from nety_jax.errors import CheckpointError
from nety_jax.runs import guard
from nety_jax.runs.manifest import MARKER
from conftest import TINY

OK, OVERWRITE = "ok", "overwrite"  # accepted; accepted only with --overwrite
DIR = "is a directory; export-torch writes a file"
RUN = "is a run directory ({})"
WRITERS = ("train", "export", "quantize", "import-torch", "import-hf", "export-hf", "export-torch")
HAS_OVERWRITE = set(WRITERS) - {"train"}


def _argv(writer, run, target):
    return {"train": ["train", "--config", TINY, "--workdir", target, "--steps", "40", "--no-progress",
                      "--set", "data.vocab_size=120"],
            "export": ["export", "--checkpoint", run, "--out", target],
            "quantize": ["quantize", "--checkpoint", run, "--out", target],
            "import-torch": ["import-torch", "--state-dict", "nety.pt", "--vocab", "vocab.json", "--out", target],
            "import-hf": ["import-hf", "--model", "hf_dir", "--out", target],
            "export-hf": ["export-hf", "--checkpoint", run, "--out", target],
            "export-torch": ["export-torch", "--checkpoint", run, "--out", target]}[writer]


def _expect(dir_writers, train=None, export_torch=DIR, **own):
    """One target's row: what each writer gets (an error fragment, OK or OVERWRITE)."""
    row = {w: dir_writers for w in ("export", "quantize", "import-torch", "import-hf", "export-hf")}
    row.update(train=dir_writers if train is None else train, **{"export-torch": export_torch})
    row.update({k.replace("_", "-"): v for k, v in own.items()})
    return row


TABLE = {
    "absent": _expect(OK, export_torch=OK),
    "empty dir": _expect(OK),
    "run": _expect(RUN.format("train"), train=OK),
    "legacy run": _expect(RUN.format("train"), train=OK),
    "export": _expect("is an export (export)", export=OVERWRITE),
    "legacy export": _expect("is an export (export)", export=OVERWRITE),
    "quantized run": _expect(RUN.format("quantize"), quantize=OVERWRITE),
    "legacy quantized run": _expect(RUN.format("quantize"), quantize=OVERWRITE),
    "import": _expect(RUN.format("import-torch"), train=OK, import_torch=OVERWRITE),
    "legacy import": _expect(RUN.format("import-torch"), train=OK, import_torch=OVERWRITE),
    "foreign dir": _expect("nety-jax did not write (it holds 'notes.txt')"),
    "only metrics.jsonl": _expect("nety-jax did not write (it holds 'metrics.jsonl')"),
    "regular file": _expect("is a regular file, not a directory",
                            export_torch="did not write (not a PyTorch state dict)"),
    "torch file": _expect("is a regular file, not a directory", export_torch=OVERWRITE),
    "under a regular file": _expect("a regular file, not a directory", export_torch="a regular file, not a directory"),
    "/proc": _expect("cannot be written (No such file or directory", export_torch="cannot be written"),
    "kernel-refused dir": _expect("cannot be written", export_torch="cannot be written"),
    "inside a run": _expect("which is a run directory (train)", export_torch="which is a run directory (train)"),
}


def _tree(path):
    """Every file and folder under ``path`` with its content's hash (a file: itself)."""
    if not os.path.lexists(path):
        return None
    if os.path.isfile(path):
        return hashlib.sha256(open(path, "rb").read()).hexdigest()
    out = {}
    for root, dirs, files in os.walk(path):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), path) + "/"] = None
        for f in files:
            out[os.path.relpath(os.path.join(root, f), path)] = hashlib.sha256(
                open(os.path.join(root, f), "rb").read()).hexdigest()
    return out


def _copy_without_marker(src, dst):
    shutil.copytree(src, dst)
    os.remove(os.path.join(dst, MARKER))
    return str(dst)


def _remark(src, dst, writer):
    shutil.copytree(src, dst)
    with open(os.path.join(dst, MARKER), encoding="utf-8") as f:
        marker = json.load(f)
    with open(os.path.join(dst, MARKER), "w", encoding="utf-8") as f:
        json.dump({**marker, "writer": writer}, f)
    return str(dst)


@pytest.fixture(scope="module")
def targets(trained_run, tmp_path_factory):
    torch = pytest.importorskip("torch")  # a PyTorch state dict is one of the targets (export-torch's)
    base = tmp_path_factory.mktemp("targets")
    run = str(base / "run")
    shutil.copytree(trained_run, run)
    export, quantized = str(base / "export"), str(base / "quantized")
    assert main(["export", "--checkpoint", run, "--out", export]) == 0
    assert main(["quantize", "--checkpoint", run, "--out", quantized]) == 0
    for name in ("empty dir", "foreign dir", "only metrics.jsonl"):
        os.makedirs(base / name)
    (base / "foreign dir" / "notes.txt").write_text("mine\n")
    (base / "only metrics.jsonl" / "metrics.jsonl").write_text('{"step": 1}\n')
    (base / "notes.txt").write_text("mine\n")
    torch.save({"w": torch.zeros(2)}, base / "mine.pt")
    legacy_import = _copy_without_marker(run, base / "legacy import")
    (base / "legacy import" / "torch_meta.json").write_text("{}")
    kernel_refused = "/sys/nety-jax-test"  # sysfs: the kernel refuses new entries, even to root
    return {"absent": str(base / "new"), "empty dir": str(base / "empty dir"), "run": run,
            "legacy run": _copy_without_marker(run, base / "legacy run"), "export": export,
            "legacy export": _copy_without_marker(export, base / "legacy export"),
            "quantized run": quantized,
            "legacy quantized run": _copy_without_marker(quantized, base / "legacy quantized"),
            "import": _remark(run, base / "import", "import-torch"), "legacy import": legacy_import,
            "foreign dir": str(base / "foreign dir"), "only metrics.jsonl": str(base / "only metrics.jsonl"),
            "regular file": str(base / "notes.txt"), "torch file": str(base / "mine.pt"),
            "under a regular file": str(base / "notes.txt" / "out"), "/proc": "/proc/nety-jax-test",
            "kernel-refused dir": kernel_refused,
            "inside a run": os.path.join(run, "config.yaml")}


def _refused(argv, capsys, fragment, target):
    assert main(argv) == 2, argv
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("nety-jax: error: ") and "Traceback" not in err, err
    assert target in err and fragment in err, (argv, err)
    return err


def test_every_writer_on_every_kind_of_target(targets, capsys):
    if os.access("/sys", os.W_OK) and os.path.isdir("/sys/kernel"):
        try:  # a kernel that lets us create entries in /sys cannot show the refusal
            os.mkdir(targets["kernel-refused dir"])
            os.rmdir(targets["kernel-refused dir"])
            pytest.skip("/sys accepts new entries here")
        except OSError:
            pass
    before = {name: _tree(path) for name, path in targets.items()}
    run = targets["run"]
    for name, row in TABLE.items():
        for writer in WRITERS:
            target, expected = targets[name], row[writer]
            argv = _argv(writer, run, target)
            if expected == OK:
                guard.claim(target, writer)
                continue
            if expected == OVERWRITE:
                _refused(argv, capsys, "add --overwrite to replace it", target)
                guard.claim(target, writer, overwrite=True)
                continue
            _refused(argv, capsys, expected, target)
            if writer in HAS_OVERWRITE:  # --overwrite replaces only an output of the writer's own kind
                _refused(argv + ["--overwrite"], capsys, expected, target)
    assert {name: _tree(path) for name, path in targets.items()} == before
    leftovers = [n for n in os.listdir(os.path.dirname(run)) if n.startswith(".")]
    assert not leftovers, leftovers


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories; the "
                    "kernel-refused /sys path covers the case")
def test_a_read_only_directory_is_refused_before_any_work(trained_run, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        for writer in WRITERS:
            _refused(_argv(writer, trained_run, str(locked / "out")), capsys, "cannot be written", str(locked))
    finally:
        locked.chmod(0o700)
    assert os.listdir(locked) == []


def test_overwrite_replaces_only_its_own_output(targets, tmp_path, capsys):
    out = tmp_path / "q"
    shutil.copytree(targets["quantized run"], out)
    (out / "stale.txt").write_text("mine\n")  # a file quantize did not write: --overwrite would lose it
    assert main(["quantize", "--checkpoint", targets["run"], "--out", str(out), "--overwrite"]) == 2
    assert "holds stale.txt, which quantize did not write" in capsys.readouterr().err
    os.remove(out / "stale.txt")
    (out / "metrics.jsonl").write_text("from the earlier output\n")  # a run's own file: replaced
    assert main(["quantize", "--checkpoint", targets["run"], "--out", str(out), "--overwrite"]) == 0
    assert not (out / "metrics.jsonl").exists() and (out / "checkpoints").is_dir()
    assert json.loads((out / MARKER).read_text())["writer"] == "quantize"
    from nety_jax.serving.pretrained import load_pretrained
    assert load_pretrained(str(out)).config.model.quant == "int8"  # the renamed Orbax checkpoint loads
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []


def test_training_continues_an_import_and_then_owns_it(targets, tmp_path):
    run = _remark(targets["run"], tmp_path / "imported", "import-torch")
    guard.mark(run, "train")
    marker = json.loads(open(os.path.join(run, MARKER)).read())
    assert marker["writer"] == "train" and marker["continued_from"] == "import-torch"
    with pytest.raises(Exception, match="is a run directory \\(train\\); import-torch writes only"):
        guard.claim(run, "import-torch", overwrite=True)


@pytest.mark.parametrize("change", ["config.yaml", "tokenizer", "added file", "removed file"])
def test_an_altered_export_is_refused_at_load_naming_the_file(targets, tmp_path, change):
    from nety_jax.serving.export import load_exported
    export = tmp_path / "export"
    shutil.copytree(targets["export"], export)
    if change == "config.yaml":
        raw = yaml.safe_load((export / "config.yaml").read_text())
        raw["decode"]["temperature"] = 0.5
        (export / "config.yaml").write_text(yaml.safe_dump(raw))
        named, why = export / "config.yaml", "changed after `nety-jax export` wrote it"
    elif change == "tokenizer":
        descriptor = json.loads((export / "tokenizer.json").read_text())
        named = export / descriptor["file"]
        named.write_bytes(named.read_bytes() + b"\0")
        why = "changed after `nety-jax export` wrote it"
    elif change == "added file":
        named, why = export / "metrics.jsonl", "was added after `nety-jax export` wrote"
        named.write_text("{}\n")
    else:
        named, why = export / "tokenizer.json", "missing (listed in"
        named.unlink()
    with pytest.raises(CheckpointError, match=re.escape(why)) as e:
        load_exported(str(export))
    assert str(e.value).startswith(f"{named}:"), str(e.value)
