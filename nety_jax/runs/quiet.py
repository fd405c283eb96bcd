"""Orbax's routine notices and a failed restore's background tracebacks, kept off the terminal."""
from __future__ import annotations

import contextlib
import logging
import sys
import threading


def _is_restore_noise(exc) -> bool:
    """After a failed restore, TensorStore callbacks still reach Orbax's closed event loop."""
    text = f"{type(exc).__name__}: {exc}"
    return "Event loop is closed" in text or "_read_array_index" in text


def _install_noise_filters() -> None:
    """Drops the 'Event loop is closed' tracebacks a failed restore leaves behind (printed from
    background threads, possibly after the restore returned); everything else is untouched."""
    if getattr(sys, "_nety_noise_filters", False):
        return
    unraisable, thread_hook, except_hook = sys.unraisablehook, threading.excepthook, sys.excepthook

    def on_unraisable(info):
        if not (_is_restore_noise(info.exc_value) or "_read_array_index" in repr(info.object)):
            unraisable(info)

    def on_thread(args):
        if not _is_restore_noise(args.exc_value):
            thread_hook(args)

    def on_except(kind, value, tb):
        if not _is_restore_noise(value):
            except_hook(kind, value, tb)
    sys.unraisablehook, threading.excepthook, sys.excepthook = on_unraisable, on_thread, on_except
    sys._nety_noise_filters = True


@contextlib.contextmanager
def quiet_orbax():
    """Orbax logs routine notices and the errors of a failed restore (with tracebacks) through
    absl; a failed restore is reported once, as one line, by the caller."""
    _install_noise_filters()
    loggers = [logging.getLogger(n) for n in ("absl", "orbax", "jax._src.distributed", "asyncio")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class _OneLineSaveErrors(logging.Filter):
    """Orbax's background save threads log a failed write (a full disk) through absl with its
    whole traceback, once per thread that sees it; the training reports it at its next save as one
    line naming the newest complete checkpoint. Here each becomes one line, said once."""

    def __init__(self):
        super().__init__()
        self.said: set = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if not (record.exc_info and str(record.msg).startswith("[process=")):  # orbax's own prefix
            return True
        line = first_line(record.exc_info[1])
        if line in self.said:
            return False
        self.said.add(line)
        record.msg, record.args, record.exc_info, record.exc_text = \
            f"a checkpoint write failed in the background: {line}", None, None, None
        return True


def one_line_save_errors() -> None:
    """Installs ``_OneLineSaveErrors`` on absl's logger (once)."""
    logger = logging.getLogger("absl")
    if not any(isinstance(f, _OneLineSaveErrors) for f in logger.filters):
        logger.addFilter(_OneLineSaveErrors())


def first_line(e: BaseException) -> str:
    """An exception's first line (at most 200 characters), for one-line reports."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]
