"""What several benchmark scripts measure alike: a call's wall time, a process's memory and CPU time.

Imported by the scripts beside it (``scripts/`` is on their ``sys.path``); no JAX, so a script
imports it before it sets up JAX's flags.
"""
from __future__ import annotations

import os
import resource
import time
from typing import Callable, Optional


def peak_rss_mb() -> float:
    """This process's peak resident memory (``ru_maxrss``: kilobytes on Linux), in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def status_mb(field: str, pid: str = "self") -> float:
    """A memory field of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``: this process's peak since its
    exec, which ``ru_maxrss`` may not be, as it can hold the parent's), in MB."""
    with open(f"/proc/{pid}/status") as f:
        return [int(line.split()[1]) for line in f if line.startswith(field)][0] / 1024


def cpu_seconds(pid: int, tid: Optional[int] = None) -> float:
    """A process's user + system CPU time so far, from ``/proc/PID/stat`` (with ``tid``: one of
    its threads', from ``/proc/PID/task/TID/stat``, which has the same fields)."""
    with open(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # after the command's name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(fn: Callable[[], object], sync: Optional[Callable[[], None]] = None) -> float:
    """Seconds ``fn()`` takes. ``sync`` (a wait for a device's queued work) runs before the clock
    starts and again before it stops, so that the time is ``fn``'s work alone, done."""
    if sync is not None:
        sync()
    start = time.perf_counter()
    fn()
    if sync is not None:
        sync()
    return time.perf_counter() - start
