"""Reading text files line by line, whatever users hand us.

gzip files are read transparently (detected by their magic bytes, not the name),
a UTF-8 byte-order mark is dropped, CRLF line ends become LF, and anything else
that is wrong (a directory, a missing or unreadable file, invalid UTF-8, a NUL
byte, a damaged gzip stream) is a ``DataError`` naming the file and line.
"""
from __future__ import annotations

import gzip
import os
import zlib
from typing import Iterator, Optional

from nety_jax.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"


class Skips:
    """Bad lines skipped under ``--skip-bad``: how many, and the first one's message."""

    def __init__(self):
        self.skipped, self.first_error = 0, None

    def add(self, message: str) -> None:
        self.skipped += 1
        self.first_error = self.first_error or message


def check_file(path: str, what: str = "data file") -> None:
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory, not a {what}")
    if not os.path.exists(path):
        raise DataError(f"{path}: {what} not found")
    if not os.path.isfile(path):
        raise DataError(f"{path}: not a regular file (a {what} is expected)")
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: cannot read this {what} (permission denied)")


def _open(path: str):
    try:
        f = open(path, "rb")
        magic = f.read(2)
        f.seek(0)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    if magic == GZIP_MAGIC:
        f.close()
        return gzip.open(path, "rb")
    return f


def read_lines(path: str, what: str = "data file") -> Iterator[tuple[int, str, Optional[str]]]:
    """(line number, text without its line end, error or None) for every line.

    A line that cannot be decoded comes with an error message naming ``file:line``
    (and empty text), so a caller can stop there or skip it and go on.
    """
    check_file(path, what)
    lineno = 0
    with _open(path) as f:
        while True:
            try:
                raw = f.readline()
            except (OSError, EOFError, zlib.error) as e:
                raise DataError(f"{path}:{lineno + 1}: damaged gzip stream ({e})") from None
            if not raw:
                return
            lineno += 1
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield lineno, "", (f"{path}:{lineno}: invalid UTF-8 at byte {e.start} (is the file "
                                   "in another encoding? convert it to UTF-8)")
                continue
            if "\x00" in line:
                yield lineno, "", f"{path}:{lineno}: contains a NUL byte (a binary file?)"
                continue
            yield lineno, line.rstrip("\r\n"), None
