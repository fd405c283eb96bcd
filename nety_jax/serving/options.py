"""``nety-jax serve``'s options, checked before anything loads: each in its range and with a backend
that can honour it, or a one-line error naming the flag; and the listening socket, bound before the
model loads so that a taken port fails at once."""
from __future__ import annotations

from typing import Optional, Sequence

from nety_jax.config.sections import MAX_POSITIONS
from nety_jax.errors import NetyError
from nety_jax.serving.settings import check_float, check_int

MAX_WINDOW_MS = 10_000.0  # a longer wait to fill a batch makes every client time out
MAX_QUEUE = 100_000

SPECULATE_NEEDS_DYNAMIC = ("--speculate needs --batching dynamic: continuous batching's slots decode one token a "
                           "row per step")
CONTINUOUS_NEEDS_CHECKPOINT = ("--batching continuous needs --checkpoint: an exported artifact runs its compiled "
                               "loop to the end, so it batches dynamically")
MESH_NEEDS_CHECKPOINT = "--mesh-tensor needs --checkpoint: an export holds its weights whole"
ADMIT_BATCH_NEEDS_CONTINUOUS = ("--admit-batch needs continuous batching (--checkpoint, without --speculate or "
                                "--batching dynamic): dynamic batching runs a batch to its end and admits nothing "
                                "meanwhile")


def check_source(checkpoint, exported) -> None:
    """Exactly one model to load: a run directory or an exported artifact."""
    if bool(checkpoint) == bool(exported):
        raise NetyError("give exactly one of --checkpoint DIR or --exported DIR")


def check_options(max_batch, window_ms, queue_size, max_tokens, chunk, batching=None, slots=32,
                  stream_interval_ms=0.0, admit_batch: Optional[int] = None) -> None:
    """Every option in its range, before anything loads: one line naming the flag."""
    if batching not in (None, "dynamic", "continuous"):
        raise NetyError(f"--batching={batching!r} must be dynamic or continuous")
    check_int("--slots", slots, 1, 4096)
    check_int("--max-batch", max_batch, 1, 4096)
    check_float("--batch-window-ms", window_ms, 0.0, MAX_WINDOW_MS)
    check_float("--stream-interval-ms", stream_interval_ms, 0.0, MAX_WINDOW_MS)
    check_int("--queue-size", queue_size, 1, MAX_QUEUE)
    check_int("--chunk", chunk, 1, MAX_POSITIONS)
    if max_tokens is not None:
        check_int("--max-tokens", max_tokens, 1, MAX_POSITIONS)
    check_admit_batch(admit_batch, slots, batching)


def check_admit_batch(admit_batch: Optional[int], slots: int, batching: Optional[str], exported=None,
                      speculate: str = "none") -> None:
    """``--admit-batch`` (None: not given) in [1, --slots], and only where the server batches
    continuously: not with ``--batching dynamic``, nor where that is the default (an exported
    artifact, ``--speculate``)."""
    if admit_batch is None:
        return
    if batching == "dynamic" or (batching is None and (exported or speculate != "none")):
        raise NetyError(ADMIT_BATCH_NEEDS_CONTINUOUS)
    check_int("--admit-batch", admit_batch, 1)
    if admit_batch > slots:
        raise NetyError(f"--admit-batch={admit_batch} must be at most --slots ({slots}): it counts rows "
                        f"finished in a chunk, and only --slots rows run at once")


def check_speculation(speculate: str, draft_tokens: int, batching: Optional[str], exported) -> None:
    """``--speculate`` / ``--draft-tokens`` in range and with a backend that can speculate."""
    if speculate not in ("none", "ngram"):
        raise NetyError(f"--speculate={speculate!r} must be none or ngram")
    check_int("--draft-tokens", draft_tokens, 1, 16)
    if speculate == "none":
        return
    if exported:
        raise NetyError("--speculate needs --checkpoint: an exported artifact's compiled loop does not speculate")
    if batching == "continuous":
        raise NetyError(SPECULATE_NEEDS_DYNAMIC)


def check_exported(exported, batching: Optional[str], mesh_tensor: int, changed: Sequence[str] = ()) -> None:
    """What an exported artifact cannot do: pause its compiled loop, be split over devices, or
    use the flags of a run directory's engines (``changed``: the flags given a value other than
    their default), which it would otherwise ignore without a word."""
    if batching == "continuous" and exported:
        raise NetyError(f"{CONTINUOUS_NEEDS_CHECKPOINT} (--batching dynamic)")
    if exported and mesh_tensor != 1:
        raise NetyError(MESH_NEEDS_CHECKPOINT)
    unused = [flag for flag in changed if flag in CHECKPOINT_ONLY]
    if exported and unused:
        raise NetyError(f"{unused[0]} needs --checkpoint: {CHECKPOINT_ONLY[unused[0]]}")


# serve's flags an exported artifact has no use for, and why
CHECKPOINT_ONLY = {
    "--slots": "an export runs whole batches (--batching dynamic, --max-batch), not decode slots",
    "--chunk": "an export's compiled loop runs each batch to its end in one call",
    "--prefix-cache-mb": "an export's compiled loop prefills every prompt itself",
}


def listen_socket(host: str, port: int):
    """A socket bound to ``host:port`` (0: any free port), or a one-line error naming the flag."""
    import socket
    if not 0 <= port <= 65535:
        raise NetyError(f"--port={port} must be between 0 and 65535")
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise NetyError(f"--host={host!r}: not an address of this machine ({e})") from None
    sock = socket.socket(family, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise NetyError(f"--port={port}: cannot listen on {host} ({e.strerror or e})") from None
    return sock
