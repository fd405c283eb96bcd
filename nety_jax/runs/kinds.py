"""What a path holds, as the writers' guard sees it, and which writer may write where.

A directory a writer made carries its marker (``manifest.MARKER``). Outputs made
before markers existed are recognised by their files: a run directory by
``config.yaml`` with ``checkpoints/`` (or only a run's own files, a run stopped
before its first checkpoint), an export by ``export.json`` with ``generate.bin``.
A directory holding anything else (even only a ``metrics.jsonl``) is someone
else's.
"""
from __future__ import annotations

import dataclasses
import os
import zipfile
from typing import Optional

from nety_jax.runs.files import CHECKPOINTS, CONFIG_FILE
from nety_jax.runs.manifest import OWN_PREFIX, read_marker

KIND_NAMES = {"run": "a run directory", "export": "an export", "hf": "a HuggingFace model directory",
              "shards": "a data-shard directory", "torch": "a PyTorch state dict"}
# the files of a run that training writes (a run stopped before its first checkpoint has only these)
RUN_FILES = {"config.yaml", "tokenizer.json", "tokenizer.model", "vocab.json", "metrics.jsonl", "loss.png",
             ".lock", "checkpoints", "damaged", "torch_meta.json", "torch_pe.npy", "hf_tokenizer.json",
             "init_from.json"}
# the files of an export made before markers listed them
EXPORT_FILES = {"generate.bin", "variables.npz", "config.yaml", "export.json", "tokenizer.json", "tokenizer.model",
                "vocab.json", "hf_tokenizer.json"}


@dataclasses.dataclass(frozen=True)
class Writer:
    name: str  # the command
    kind: str  # what it writes (KIND_NAMES)
    sealed: bool = True  # every file checksummed in the marker, verified at load
    is_file: bool = False  # writes one file, not a directory
    continues: frozenset = frozenset()  # writers whose outputs it writes into (no --overwrite needed)


WRITERS = {w.name: w for w in (
    Writer("train", "run", sealed=False, continues=frozenset({"train", "import-torch", "import-hf"})),
    Writer("import-torch", "run", sealed=False),
    Writer("import-hf", "run", sealed=False),
    Writer("quantize", "run", sealed=False),
    Writer("export", "export"),
    Writer("export-hf", "hf"),
    Writer("prepare", "shards"),
    Writer("export-torch", "torch", sealed=False, is_file=True),
)}


@dataclasses.dataclass(frozen=True)
class Found:
    """An existing output: its kind and the writer that made it (None: not nety-jax's)."""
    kind: Optional[str]
    writer: Optional[str]
    detail: str = ""  # for foreign directories: one of their entries

    def describe(self) -> str:
        if self.kind is None:
            return f"is a non-empty directory nety-jax did not write (it holds {self.detail!r})"
        # a kind this version does not know (a newer nety-jax's output): still never written over
        what = KIND_NAMES.get(self.kind) or f"a nety-jax output of a kind this version does not know ({self.kind!r})"
        return f"is {what} ({self.writer})"


def _legacy_run_writer(directory: str) -> str:
    """The writer of a run made before markers: quantize and import-torch left their traces."""
    if os.path.isfile(os.path.join(directory, "torch_meta.json")):
        return "import-torch"
    try:
        import yaml
        with open(os.path.join(directory, CONFIG_FILE), encoding="utf-8") as f:
            model = (yaml.safe_load(f) or {}).get("model") or {}
        return "quantize" if model.get("quant", "none") not in ("none", None) else "train"
    except Exception:  # an unreadable config: still a run, loading will name the problem
        return "train"


def _is_legacy_run(directory: str, names: set) -> bool:
    if CONFIG_FILE not in names:
        return False
    if os.path.isdir(os.path.join(directory, CHECKPOINTS)):
        return True
    return all(n in RUN_FILES or n.startswith("events.out.tfevents") for n in names)


def identify_dir(directory: str) -> Optional[Found]:
    """What a directory holds: None when empty; else a Found (kind None: someone else's)."""
    names = {n for n in os.listdir(directory) if not n.startswith(OWN_PREFIX)}
    if not names:
        return None
    marker = read_marker(directory)
    if marker is not None:
        return Found(marker["kind"], marker["writer"])
    if {"export.json", "generate.bin"} <= names:
        return Found("export", "export")
    if _is_legacy_run(directory, names):
        return Found("run", _legacy_run_writer(directory))
    return Found(None, None, sorted(names)[0])


def is_torch_file(path: str) -> bool:
    """A file ``torch.save`` wrote (a zip archive with a pickle record); export-torch's kind."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/data.pkl") or n == "data.pkl" for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False
