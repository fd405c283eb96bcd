"""The one guard every command that writes files goes through.

A writer (``kinds.WRITERS``: train, import-torch, import-hf, quantize, export,
export-hf, prepare, export-torch) writes only

- a path that does not exist, or an empty directory;
- an output of its own kind that it made (its marker says so), and only with
  ``--overwrite``: ``export --overwrite`` replaces an earlier export, never a run;
- for ``train``, a run directory it continues (made by train or an importer);

and never inside another nety-jax output (``export-torch --out RUN/config.yaml``
is refused). Anything else is one line naming the path and what it holds. Paths
that cannot be written (under ``/proc``, under a regular file, read-only, a disk
with less than ``MIN_FREE_BYTES`` free) are refused before any work.

Use, for a new writer (one call; the checks run on entering, before the work)::

    from nety_jax.runs import guard

    with guard.output(out, "import-hf", overwrite=args.overwrite) as tmp:
        ...  # write every file into tmp (a directory beside ``out``; a file path for file writers)
    # on success: the marker (kind, writer, nety-jax version, sha256 of every file of a
    # sealed output) is written and tmp replaces ``out`` in one rename; on an error tmp is
    # removed and ``out`` is as it was

A process that reads an output for as long as it runs (``train`` streaming from a prepared
directory) holds ``with guard.reading(directory):``, a shared kernel lock on the directory;
``--overwrite`` of a directory someone holds is refused, checked again while the replacing
rename runs under an exclusive lock (replacing shards under a training fed it other data).

``guard.claim(path, writer, ...)`` runs the checks alone (``train``, which writes
in place, then calls ``guard.mark(workdir, "train")``), and
``manifest.verify(directory, kind, redo)`` checks a sealed output at load.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import os
import shutil
import tempfile
from typing import Iterator, Optional

from nety_jax.errors import OutputError
from nety_jax.runs.kinds import EXPORT_FILES, KIND_NAMES, RUN_FILES, WRITERS, Found, Writer, identify_dir, \
    is_torch_file
from nety_jax.runs.manifest import MARKER, OWN_PREFIX, read_marker, write_marker

MIN_FREE_BYTES = 1 << 20


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _accepts(w: Writer) -> str:
    if w.is_file:
        return (f"{w.name} writes a new file, or with --overwrite replaces {KIND_NAMES[w.kind]}, outside "
                "nety-jax's run and export directories")
    if w.continues:
        return (f"{w.name} writes only into a new or empty directory or a run it continues "
                f"(made by {', '.join(sorted(w.continues))})")
    return f"{w.name} writes only into a new or empty directory or (with --overwrite) an earlier {w.name} output"


def _probe(directory: str, path: str, flag: str, need_bytes: int) -> None:
    """Creating (and removing) an entry in ``directory`` is what the writer will do."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=f"{OWN_PREFIX}-probe-", dir=directory))
        stat = os.statvfs(directory)
    except OSError as e:
        raise OutputError(f"{flag} {path}: cannot be written ({e.strerror or e} in {directory})") from None
    free = stat.f_bavail * stat.f_frsize
    if free < max(need_bytes, MIN_FREE_BYTES):
        raise OutputError(f"{flag} {path}: the disk is full ({free / 2**20:.1f} MB free in {directory})")


def _check_writable(path: str, flag: str, in_place: bool, need_bytes: int) -> None:
    absolute = os.path.abspath(path)
    nearest = os.path.dirname(absolute)
    while not os.path.lexists(nearest):
        nearest = os.path.dirname(nearest)
    if not os.path.isdir(nearest):
        raise OutputError(f"{flag} {path}: is under {nearest}, a regular file, not a directory")
    _probe(nearest, path, flag, need_bytes)
    if in_place and os.path.isdir(absolute):
        _probe(absolute, path, flag, need_bytes)


def _inside_output(path: str) -> Optional[tuple[str, Found]]:
    """The nearest enclosing directory that is a nety-jax output, if any."""
    parent = os.path.dirname(os.path.abspath(path))
    while True:
        try:
            found = identify_dir(parent) if os.path.isdir(parent) else None
        except (OSError, ValueError):  # an unreadable ancestor holds nothing we know
            found = None
        if found is not None and found.kind is not None:
            return parent, found
        up = os.path.dirname(parent)
        if up == parent:
            return None
        parent = up


def _existing(path: str, flag: str, w: Writer) -> Optional[Found]:
    if not os.path.lexists(path):
        return None
    if w.is_file:
        if os.path.isdir(path):
            raise OutputError(f"{flag} {path}: is a directory; {w.name} writes a file")
        if not os.path.isfile(path):
            raise OutputError(f"{flag} {path}: is not a regular file; {_accepts(w)}")
        if not is_torch_file(path):
            raise OutputError(f"{flag} {path}: is a file {w.name} did not write (not "
                              f"{KIND_NAMES[w.kind]}); {_accepts(w)}")
        return Found(w.kind, "torch.save")
    if not os.path.isdir(path):
        what = "a regular file" if os.path.isfile(path) else "something else (a broken link, a device)"
        raise OutputError(f"{flag} {path}: is {what}, not a directory; {_accepts(w)}")
    try:
        return identify_dir(path)
    except OSError as e:
        raise OutputError(f"{flag} {path}: cannot be read ({e.strerror or e})") from None


def _check_replace(path: str, flag: str, w: Writer, found: Optional[Found], overwrite: bool) -> None:
    if found is None:
        return
    if found.kind == w.kind and found.writer in w.continues:
        return
    own = found.kind == w.kind and (found.writer == w.name or w.is_file)
    if own and not overwrite:
        raise OutputError(f"{flag} {path}: already holds {KIND_NAMES[w.kind]} ({found.writer}); add "
                          "--overwrite to replace it")
    if not own:
        raise OutputError(f"{flag} {path}: {found.describe()}; {_accepts(w)}")
    if not w.is_file:
        with _replacing(path, flag):
            pass
    added = None if w.is_file else _added_since(path, found)
    if added is not None:  # --overwrite replaces the whole directory: this file would be deleted
        raise OutputError(f"{flag} {path}: holds {added}, which {found.writer} did not write (added since); "
                          f"--overwrite would delete it: move it out of {path} first")


def _added_since(directory: str, found: Found) -> Optional[str]:
    """The first file in an earlier output that its writer did not write, or None: a sealed
    output's marker lists every file it wrote; a run holds only a run's files (its
    checkpoints/ and damaged/ are its own); an export older than markers only an export's."""
    listed = (read_marker(directory) or {}).get("files")
    for root, dirs, files in os.walk(directory):
        rel = os.path.relpath(root, directory)
        if rel == "." and not isinstance(listed, dict) and found.kind == "run":
            dirs[:] = [d for d in dirs if d not in RUN_FILES]  # a run's own folders
        for name in sorted(files):
            entry = name if rel == "." else os.path.join(rel, name)
            if name.startswith(OWN_PREFIX) or entry == MARKER:
                continue
            if isinstance(listed, dict):
                known = entry in listed
            elif found.kind == "run":
                known = entry in RUN_FILES or entry.startswith("events.out.tfevents")
            else:
                known = entry in EXPORT_FILES
            if not known:
                return entry
    return None


@dataclasses.dataclass(frozen=True)
class Claim:
    """A checked output path; ``staging()`` writes it."""
    path: str
    writer: Writer
    flag: str
    overwrite: bool

    @contextlib.contextmanager
    def staging(self) -> Iterator[str]:
        parent = os.path.dirname(os.path.abspath(self.path))
        prefix = f".{os.path.basename(os.path.abspath(self.path))}.partial-"
        try:
            os.makedirs(parent, exist_ok=True)
            if self.writer.is_file:
                fd, tmp = tempfile.mkstemp(prefix=prefix, dir=parent)
                os.close(fd)
            else:
                tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
            os.chmod(tmp, (0o666 if self.writer.is_file else 0o777) & ~_umask())  # as open/mkdir would
        except OSError as e:
            raise OutputError(f"{self.flag} {self.path}: cannot be written ({e.strerror or e})") from None
        try:
            yield tmp
            self._commit(tmp)
        except OSError as e:
            if not str(e.filename or "").startswith(tmp) and e.filename is not None:
                raise
            raise OutputError(f"{self.flag} {self.path}: writing failed ({e.strerror or e}); nothing was "
                              "changed") from None
        finally:
            if os.path.isdir(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
            elif os.path.lexists(tmp):
                os.remove(tmp)

    def _commit(self, tmp: str) -> None:
        w = self.writer
        if not w.is_file:
            write_marker(tmp, w.kind, w.name, w.sealed)
        claim(self.path, w.name, self.overwrite, self.flag)  # again: the target may have changed meanwhile
        if w.is_file or not os.path.isdir(self.path):
            os.replace(tmp, self.path)
            return
        with _replacing(self.path, self.flag):  # no reader can start between the check and the rename
            if _exchange(tmp, self.path):  # tmp now holds the earlier output, which staging removes
                return
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(self.path))}.old-",
                                   dir=os.path.dirname(os.path.abspath(self.path)))
            os.replace(self.path, os.path.join(old, "out"))
            os.replace(tmp, self.path)
        shutil.rmtree(old, ignore_errors=True)


def _exchange(a: str, b: str) -> bool:
    """Swaps two directories in one step (Linux's ``renameat2(RENAME_EXCHANGE)``): two renames left
    no output at all, the earlier one hidden in a ``.old-`` folder, when Ctrl-C or a kill came between
    them. False where the kernel, the C library or the file system cannot (then two renames)."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


# flock failures that mean "this file system cannot lock" (NFS without lockd, some FUSE): no lock is
# taken and nothing is refused for it, as before locks existed
_NO_LOCKS = (errno.EBADF, errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP)


def _lock(fd: int, how: int) -> bool:
    """``flock(fd, how | LOCK_NB)``: False when another process holds a conflicting lock."""
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in _NO_LOCKS:
            return True
        return False
    return True


@contextlib.contextmanager
def _replacing(path: str, flag: str) -> Iterator[None]:
    """An exclusive lock on the directory ``path`` while it is replaced: refused while a reader
    (``reading``) holds it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # vanished or unreadable: the other checks say what it is
        yield
        return
    try:
        if not _lock(fd, fcntl.LOCK_EX):
            raise OutputError(f"{flag} {path}: is in use (a running training streams from it or trains in "
                              "it); replacing it would change its files under that training: wait for it to "
                              "end, or write another --out")
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def reading(directory: str, flag: str = "--data") -> Iterator[None]:
    """Holds ``directory`` (an output) for as long as the caller reads it: the writers'
    ``--overwrite`` refuses to replace it meanwhile. The kernel drops the lock with the process."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise OutputError(f"{flag} {directory}: cannot be read ({e.strerror or e})") from None
    try:
        if not _lock(fd, fcntl.LOCK_SH):
            raise OutputError(f"{flag} {directory}: is being replaced (an --overwrite is writing it); "
                              "retry when it has finished")
        if os.stat(directory).st_ino != os.fstat(fd).st_ino:  # replaced between the open and the lock
            raise OutputError(f"{flag} {directory}: was replaced while being opened; retry")
        yield
    finally:
        os.close(fd)


def claim(path: str, writer: str, overwrite: bool = False, flag: str = "--out", need_bytes: int = 0) -> Claim:
    """Checks that ``writer`` may write ``path`` (see the module docstring); a refusal is an
    ``OutputError`` of one line naming the path and what it holds."""
    w = WRITERS[writer]
    if not str(path).strip():
        raise OutputError(f"{flag}: the path is empty")
    _check_writable(path, flag, in_place=bool(w.continues), need_bytes=need_bytes)
    inside = _inside_output(path)
    if inside is not None:
        where, found = inside
        raise OutputError(f"{flag} {path}: is inside {where}, which {found.describe()}; {_accepts(w)}")
    _check_replace(path, flag, w, _existing(path, flag, w), overwrite)
    return Claim(path, w, flag, overwrite)


def output(path: str, writer: str, overwrite: bool = False, flag: str = "--out",
           need_bytes: int = 0) -> contextlib.AbstractContextManager:
    """``claim(...)`` then its ``staging()``: the one call a writer makes (module docstring)."""
    return claim(path, writer, overwrite, flag, need_bytes).staging()


def mark(directory: str, writer: str) -> None:
    """An in-place writer's marker (``train``): written once, and again when a run another
    writer made (an import) is continued, so that writer's ``--overwrite`` no longer takes it."""
    marker = read_marker(directory)
    if marker is not None and marker.get("writer") == writer:
        return
    w = WRITERS[writer]
    extra = {"continued_from": marker["writer"]} if marker is not None else {}
    write_marker(directory, w.kind, w.name, w.sealed, **extra)
