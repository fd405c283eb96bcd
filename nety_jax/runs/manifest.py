"""The marker every writer leaves in its output: ``nety-jax.json``.

``{"format": 1, "kind": "run" | "export" | ..., "writer": "train" | "export" | ...,
"nety_jax_version": "...", "files": {"relative/path": "sha256", ...}}``. ``files``
is there for sealed outputs (exports, HF exports, data shards): every file of
the artifact, verified by ``verify`` at load, so a file changed or added later is
named and refused. Run directories grow (checkpoints, metrics), so their marker
names only the kind and the writer.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Optional

from nety_jax.errors import CheckpointError

MARKER = "nety-jax.json"
OWN_PREFIX = ".nety-jax"  # our own passing entries (probes, a marker being written): not content
FORMAT = 1


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_files(directory: str) -> list[str]:
    """Every file under ``directory`` (relative, sorted), except the marker and hidden names."""
    out = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = os.path.relpath(root, directory)
        for name in files:
            if not name.startswith("."):
                path = name if rel == "." else os.path.join(rel, name)
                if path != MARKER:
                    out.append(path)
    return sorted(out)


def read_marker(directory: str) -> Optional[dict]:
    """The marker's content, None when there is none; a malformed one is an error naming it."""
    path = os.path.join(directory, MARKER)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({str(e)[:160]})") from None
    if not isinstance(marker, dict) or not isinstance(marker.get("kind"), str) or \
            not isinstance(marker.get("writer"), str):
        raise CheckpointError(f"{path}: not a nety-jax marker (expected kind and writer)")
    return marker


def write_marker(directory: str, kind: str, writer: str, sealed: bool, **extra) -> dict:
    """Writes the marker atomically; ``sealed``: with the sha256 of every file now there."""
    from nety_jax import __version__
    marker = {"format": FORMAT, "kind": kind, "writer": writer, "nety_jax_version": __version__, **extra}
    if sealed:
        marker["files"] = {name: sha256(os.path.join(directory, name)) for name in content_files(directory)}
    path = os.path.join(directory, MARKER)
    tmp = os.path.join(directory, f"{OWN_PREFIX}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(marker, f, indent=1)
    os.replace(tmp, path)
    return marker


def verify(directory: str, kind: str, redo: str) -> Optional[dict]:
    """Checks a sealed output against its marker: each listed file present and unchanged, no
    other file. Returns the marker (None when there is none: an output older than markers).
    ``redo`` says what to do about a failure, e.g. "re-export"."""
    marker = read_marker(directory)
    if marker is None:
        return None
    where = os.path.join(directory, MARKER)
    if marker["kind"] != kind:
        raise CheckpointError(f"{directory}: holds a {marker['kind']} ({marker['writer']}), not a {kind} "
                              f"(per {where})")
    files = marker.get("files")
    if not isinstance(files, dict):
        raise CheckpointError(f"{where}: lists no files to verify; {redo}")
    for name, digest in files.items():
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            raise CheckpointError(f"{path}: missing (listed in {where}); {redo}")
        if sha256(path) != digest:
            raise CheckpointError(f"{path}: changed after `nety-jax {marker['writer']}` wrote it (its "
                                  f"checksum does not match {where}); {redo}")
    extra = [name for name in content_files(directory) if name not in files]
    if extra:
        raise CheckpointError(f"{os.path.join(directory, extra[0])}: was added after `nety-jax "
                              f"{marker['writer']}` wrote {directory} (not in {where}); remove it or {redo}")
    return marker
