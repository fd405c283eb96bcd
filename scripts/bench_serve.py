"""Load on the HTTP server: dynamic vs continuous batching in the same run, and a flood.

    python scripts/bench_serve.py --model demo [--checkpoint runs/demo] [--seconds 10] [--overload 100]
    python scripts/bench_serve.py --model gpt   # a GPT (gpt_tiny widened to a 320-token context)
    python scripts/bench_serve.py --model demo --flood 10000 --only-flood
    python scripts/bench_serve.py --model demo --mix loguniform   # many short replies, few long
    python scripts/bench_serve.py --model gpt --slots 8 --admit-batch 4   # the continuous servers' --admit-batch
    python scripts/bench_serve.py --model demo --against DIR      # this tree's server against DIR's
    python scripts/bench_serve.py --model gpt --against DIR --against-engine dynamic
    python scripts/bench_serve.py --model gpt --slots 8 --old-dynamic DIR   # + DIR's dynamic server

Each request asks for a reply length drawn from 8 to 256 tokens (at most the model's room after
the prompt): uniformly (``--mix uniform``, the default) or log-uniformly (``--mix loguniform``);
the output names the mix and its head-of-line ceiling. It streams or not at random. The
model's <eos> is disabled (decode.min_new_tokens) so every reply has its drawn length: the
load is the same for both engines whatever the weights. Both servers run side by side (each
a fresh process, its programs compiled before it listens; the idle one costs nothing), served
as ``nety-jax serve`` serves (``server.http_server``, the default ``--stream-interval-ms``).
The load generator is one asyncio thread on raw keep-alive connections (a real client runs on
other machines; here its CPU is taken from the servers): it prints its CPU per token received,
and each saturation window the servers' CPU per generated token, all threads and the
interpreter's (HTTP, engine) apart:

- saturation: for --seconds, 2 x --slots closed-loop clients (each sends its next request when
  its last is answered: the engine's slots are full and as many requests wait in its queue, so
  it always has work and nothing is refused), or with --overload R open-loop arrivals at R per
  second (the bounded queue answers 429 to the rest: answering refusals and the generator's
  thread per request then share the CPU with the engine): tokens/s of the replies completed in
  the window's last two thirds (its first third is the engine filling up); the two engines'
  windows are taken in turn, --rounds times (the same requests for both in a round), so a drift
  in the machine's other load hits both alike; the ratio reported is the median of the rounds';
- half load: open-loop Poisson arrivals at half the DYNAMIC engine's measured capacity (requests/s), the same
  rate for both: p50/p99 time to first token and per-token latency (streamed requests),
  p50/p99 request latency (all).

--old-dynamic DIR adds a third server to that comparison: the dynamic server of another tree,
e.g. the issue's own baseline, the tree #29 was filed against (``git archive 8f4c995 | tar -x -C
DIR``; continuous batching came in its child ba7d0fe), started with the same max batch (--slots),
queue, chunk and 5 ms window, its programs compiled before it listens. The three servers' windows
are taken in turn, the order rotated every round; printed per round and as medians: continuous /
this tree's dynamic, continuous / DIR's dynamic, this tree's dynamic / DIR's dynamic. The half load
is then half DIR's dynamic capacity, for all three. Every server child, this tree's or another's,
runs THIS file's harness with the other tree first on PYTHONPATH (an older tree's own
bench_serve.py has no child mode); a run whose config.yaml has ``train`` fields the older tree does
not know (8f4c995: train.remat, train.remat_scan, train.memory_limit_gb; they do not change the
served model) is loaded there from a view of the run without them.

--flood N sends N requests from 128 closed-loop clients to a continuous server with a small
queue: counts 200s and 429s, checks that every request got exactly one answer, that ids are
unique and that the tokens the server generated equal the tokens clients received (no lost or
duplicated completion), and samples the server's resident memory every 1,000 requests.
The CPU may be shared with other work: compare the two engines only within one run.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from bench_util import cpu_seconds, status_mb, timed  # noqa: E402
PROMPTS = ["Bonjour !", "Salut !", "Merci beaucoup !", "Ça va ?", "Bonne nuit !", "À demain !", "Je suis là.",
           "Il pleut."]  # short: one prompt bucket, so warming up compiles every program a window meets
CACHE = os.path.join(tempfile.gettempdir(), "nety-bench-serve-cache")  # compiled programs, across runs
SHORTEST, LONGEST = 8, 256  # reply lengths drawn (issue #29), at most the model's room


@dataclasses.dataclass(frozen=True)
class Mix:
    """Reply lengths from ``low`` to ``high`` tokens: ``uniform`` (every length equally likely:
    the default, the issue names no distribution) or ``loguniform`` (the log of the length
    uniform: many short replies and few long, closer to chat traffic such as ShareGPT's)."""
    kind: str
    high: int
    low: int = SHORTEST

    def draw(self, rng: random.Random) -> int:
        if self.kind == "uniform":
            return rng.randint(self.low, self.high)
        return min(self.high, int(math.exp(rng.uniform(math.log(self.low), math.log(self.high + 1)))))

    def probabilities(self) -> list:
        """P(length = low + i) for each length, exactly (the floor of a log-uniform draw)."""
        if self.kind == "uniform":
            return [1 / (self.high - self.low + 1)] * (self.high - self.low + 1)
        span = math.log((self.high + 1) / self.low)
        return [math.log((k + 1) / k) / span for k in range(self.low, self.high + 1)]

    def ceiling(self, rows: int) -> float:
        """The head-of-line factor at ``rows`` rows a batch: the expected longest of ``rows``
        draws over the mean draw, the most continuous batching can gain over a dynamic batch
        that runs to its longest row, at equal cost per token."""
        p, below, longest = self.probabilities(), 0.0, 0.0
        for i, q in enumerate(p):
            longest += (self.low + i) * ((below + q) ** rows - below ** rows)
            below += q
        return longest / sum((self.low + i) * q for i, q in enumerate(p))

    def describe(self, slots) -> str:
        ceilings = ", ".join(f"{self.ceiling(n):.2f}x at {n} slots" for n in slots)
        return (f"replies drawn {self.kind} from {self.low} to {self.high} tokens (mean "
                f"{sum((self.low + i) * q for i, q in enumerate(self.probabilities())):.1f}); head-of-line "
                f"ceiling {ceilings}")


def checkpoint_for(model: str, given: str) -> str:
    if given:
        return given
    if model == "demo":
        from demo_run import demo_run
        return demo_run(os.path.join(ROOT, "runs", "demo"), 60, "bench_serve", warmup=10)
    out = os.path.join(tempfile.gettempdir(), "nety-bench-serve-gpt")
    if not os.path.isdir(os.path.join(out, "checkpoints")):  # throughput does not depend on the weights
        print(f"[bench_serve] training gpt_tiny (model.max_len=320) for 2 steps in {out}", flush=True)
        subprocess.run([sys.executable, "-m", "nety_jax.cli", "train", "--config",
                        os.path.join(ROOT, "configs", "gpt_tiny.yaml"), "--workdir", out, "--steps", "2",
                        "--no-progress", "--set", "model.max_len=320", "--set", "train.eval_every=2",
                        "--set", "train.warmup_steps=1"],
                       cwd=ROOT, check=True, capture_output=True)
    return out


# -- the server (a child process running this file with --child) --------------------------------

def as_the_command_runs() -> None:
    """What the served tree's ``nety-jax`` command does before JAX starts (its ``cli.main``):
    ``runtime.keep_host_memory`` (glibc's malloc settings and, on the CPU, programs run in the
    calling thread: async dispatch off), so every server runs as ``nety-jax serve`` runs it.
    $NETY_JAX_HOST_MALLOC (``default``: neither) reaches the children as it reaches the command."""
    from nety_jax import runtime
    if hasattr(runtime, "keep_host_memory"):
        runtime.keep_host_memory()


def child(args) -> int:
    """Serves ``--checkpoint`` with <eos> disabled, so replies have the length clients ask. The
    code served is the tree on PYTHONPATH (this one, or another's for ``--against`` and
    ``--old-dynamic``): a tree from before continuous batching is served by ``legacy_child``."""
    import inspect

    from nety_jax.serving import server
    if "batching" not in inspect.signature(server.create_app).parameters:
        return legacy_child(args)
    from nety_jax.serving.engine import PretrainedBackend
    from nety_jax.serving.pretrained import load_pretrained
    pre = load_pretrained(args.checkpoint)
    room = pre.model.prompts.max_new_tokens()
    backend = PretrainedBackend(pre, min(room, 256) if args.batching == "dynamic" else None)  # 256: the longest draw
    backend.spec = dataclasses.replace(backend.spec, min_new_tokens=1 << 20)
    admit = os.environ.get("NETY_BENCH_ADMIT_BATCH")  # --admit-batch, for a tree that has it
    extra = ({"admit_batch": int(admit)} if admit and args.batching == "continuous"
             and "admit_batch" in inspect.signature(server.create_app).parameters else {})
    app = server.create_app(backend, "bench", max_batch=args.slots, window_ms=5.0, queue_size=args.queue,
                            chunk=8, batching=args.batching, slots=args.slots, **extra)
    compile_all(app.state.server.engine, pre)
    getattr(server, "settle", lambda: None)()  # as `nety-jax serve` does before it listens
    if os.environ.get("NETY_BENCH_TRACE"):
        trace(app.state.server.engine, os.environ["NETY_BENCH_TRACE"], args.batching)
    sockets = [server.listen_socket("127.0.0.1", args.port)]
    if hasattr(server, "http_server"):
        server.http_server(app).run(sockets=sockets)  # as `nety-jax serve` serves
    else:
        _uvicorn(app, args.port, sockets)
    return 0


def _uvicorn(app, port: int, sockets: list) -> None:
    """uvicorn as a tree without ``server.http_server`` ran it in its ``nety-jax serve``."""
    import uvicorn
    uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")).run(sockets=sockets)


def legacy_child(args) -> int:
    """The dynamic server of a tree from before continuous batching (e.g. the issue-day commit
    8f4c995), as its ``nety-jax serve --max-batch S --queue-size Q --chunk 8 --max-tokens N``
    (5 ms window) ran it: its create_app has no batching or slots, its engine no warm-up (its
    programs are compiled here before it listens, one per batch bucket, as this tree's start-up
    does), no heap freeze, plain uvicorn. <eos> disabled as for this tree's servers."""
    from nety_jax.serving.engine import PretrainedBackend
    from nety_jax.serving.server import create_app, listen_socket
    if args.batching != "dynamic":
        raise SystemExit(f"{os.environ.get('PYTHONPATH')}: this tree has dynamic batching only (its "
                         f"create_app takes no batching): serve it as dynamic")
    pre = load_for_old_code(args.checkpoint)
    backend = PretrainedBackend(pre, min(pre.model.prompts.max_new_tokens(), LONGEST))
    backend.spec = dataclasses.replace(backend.spec, min_new_tokens=1 << 20)
    app = create_app(backend, "bench", max_batch=args.slots, window_ms=5.0, queue_size=args.queue, chunk=8)
    legacy_warm_up(app.state.server.engine, pre)
    if os.environ.get("NETY_BENCH_TRACE"):
        trace(app.state.server.engine, os.environ["NETY_BENCH_TRACE"], "dynamic-old")
    _uvicorn(app, args.port, [listen_socket("127.0.0.1", args.port)])
    return 0


UNKNOWN_FIELD = re.compile(r"unknown field (train)\.(\w+)$")


def load_for_old_code(checkpoint: str):
    """``load_pretrained(checkpoint)`` in an older tree. Its config loader refuses fields added
    since (e.g. train.remat, train.remat_scan, train.memory_limit_gb for 8f4c995): a field of the
    ``train`` section does not change the served model, so it is left out of a view of the run
    (a temporary directory: the run's files linked, config.yaml without it), and the child says
    so; any other unknown field ends the child with the loader's one-line error."""
    from nety_jax.errors import ConfigError
    from nety_jax.serving.pretrained import load_pretrained
    import yaml
    path, dropped = checkpoint, []
    while True:
        try:
            pre = load_pretrained(path)
            break
        except ConfigError as e:
            found = UNKNOWN_FIELD.search(str(e))
            if not found:
                raise SystemExit(f"the older tree cannot load {checkpoint}: {e}") from None
            dropped.append(found.group(2))
            path = run_view(checkpoint, dropped, yaml)
    if dropped:
        print(f"[bench_serve child] {checkpoint}: train.{', train.'.join(dropped)} left out of its config for the "
              f"older tree (training-only fields it does not know)", flush=True)
    return pre


def run_view(checkpoint: str, dropped: list, yaml) -> str:
    """A directory with ``checkpoint``'s files linked and its config.yaml less ``train.<dropped>``."""
    view = tempfile.mkdtemp(prefix="nety-bench-old-run-")
    for name in os.listdir(checkpoint):
        if name != "config.yaml":
            os.symlink(os.path.join(os.path.abspath(checkpoint), name), os.path.join(view, name))
    with open(os.path.join(checkpoint, "config.yaml")) as f:
        config = yaml.safe_load(f)
    for name in dropped:
        config["train"].pop(name, None)
    with open(os.path.join(view, "config.yaml"), "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    return view


def legacy_warm_up(engine, pre) -> None:
    """The older engine's programs, compiled before it listens, per batch bucket up to its max
    batch and per prompt bucket of ``PROMPTS``: the stream's start and continuation, and the
    continuation after a row ended while others go on (its engine then stops that row with a
    ``done`` array made on the host: in 8f4c995 a new signature, compiled on first use)."""
    from nety_jax.data.prompts import batch_bucket
    from nety_jax.serving.engine import Row
    # row 0 ends after one continuation (from the start's state), the others go on from a state
    # whose done flags the host replaced
    shapes, first, longer = set(), engine.chunk + 1, 3 * engine.chunk + 1
    for prompt in PROMPTS:
        ids = pre.model.prompts.ids(pre.tokenizer, prompt, pre.config.data)
        for n in sorted({batch_bucket(k) for k in range(1, engine.max_batch + 1)}):
            rows = [Row(ids, 0.8, 0, 1.0, first if i == 0 else longer, i) for i in range(n)]
            batch = engine._prompt_batch(rows)
            if batch.tokens.shape not in shapes:
                shapes.add(batch.tokens.shape)
                # the rows the device has ended are stopped, as the engine's _RowState.update does
                engine.backend.run(batch, rows, lambda tokens, done: done.copy(), engine.chunk)


def compile_all(engine, pre) -> None:
    """The engine's start-up warm-up for the prompt buckets of ``PROMPTS`` (what ``nety-jax
    serve`` does for every bucket), so no window meets a compile."""
    engine.warm_up([len(pre.model.prompts.ids(pre.tokenizer, p, pre.config.data)) for p in PROMPTS])


def trace(engine, path: str, name: str) -> None:
    """Diagnostics for a slow first token (``--trace FILE``), one line per event, wall-clock
    stamped: programs compiled after the warm-up, garbage-collector pauses over 2 ms, and every
    request whose first text (or reply) took over 30 ms, with its wait in the queue."""
    import gc
    import logging
    out = open(path, "a", buffering=1)
    say = lambda text: out.write(f"{time.time():.3f} {name} {text}\n")

    class Compiles(logging.Handler):
        def emit(self, record):
            message = record.getMessage()
            if "ompil" in message:
                say("compile " + (message[:100] + " ... " + message[-600:]).replace("\n", " "))
    logging.getLogger("jax").addHandler(Compiles())
    logging.getLogger("jax").setLevel(logging.WARNING)
    import jax
    jax.config.update("jax_log_compiles", True)
    began = {}

    def collected(phase, info):
        if phase == "start":
            began["t"] = time.perf_counter()
        elif time.perf_counter() - began.get("t", time.perf_counter()) > 0.002:
            say(f"gc gen {info['generation']} {1000 * (time.perf_counter() - began['t']):.1f} ms")
    gc.callbacks.append(collected)
    submit, take = engine.submit, getattr(engine, "_prefill", None) or engine._run

    def timed_submit(job):
        deliver, seen = job.deliver, {}

        def first_noted(kind, payload):
            if kind in ("delta", "done") and "first" not in seen:
                seen["first"] = time.perf_counter() - job.created
                if seen["first"] > 0.03:
                    say(f"slow first {1000 * seen['first']:.0f} ms (waited {1000 * seen.get('admit', -1):.0f} "
                        f"ms to be admitted; stream {job.stream})")
            deliver(kind, payload)
        job.deliver, job.seen = first_noted, seen
        submit(job)

    def timed_take(jobs):
        now = time.perf_counter()
        for job in jobs:
            getattr(job, "seen", {})["admit"] = now - job.created
        return take(jobs)
    engine.submit = timed_submit
    setattr(engine, "_prefill" if hasattr(engine, "_prefill") else "_run", timed_take)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(checkpoint: str, batching: str, port: int, slots: int, queue: int, root: str = ROOT) -> tuple:
    """(argv, environment, working directory) of a server child serving the code in ``root``:
    always THIS file's ``--child`` (the same harness for every tree; an older tree's own
    bench_serve.py may have none), with ``root`` first on PYTHONPATH and as the working
    directory, and the run given as an absolute path (``root`` may have no runs/)."""
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.1",
               PYTHONPATH=os.path.abspath(root))
    argv = [sys.executable, os.path.abspath(__file__), "--child", "--checkpoint", os.path.abspath(checkpoint),
            "--batching", batching, "--port", str(port), "--slots", str(slots), "--queue", str(queue)]
    return argv, env, os.path.abspath(root)


def start_server(checkpoint: str, batching: str, slots: int, queue: int, root: str = ROOT):
    """A server of the code in ``root`` (this tree, or another for ``--against`` / ``--old-dynamic``)."""
    print(f"[bench_serve] starting a {batching} server of {root} ({slots} slots, queue {queue}; compiling) ...",
          flush=True)
    port = free_port()
    log = tempfile.TemporaryFile(mode="w+")
    argv, env, cwd = server_command(checkpoint, batching, port, slots, queue, root)
    proc = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        if proc.poll() is not None:
            break
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                log.seek(0)
                for line in log.read().splitlines():  # what the child says of the run (an older tree's view)
                    if line.startswith("[bench_serve child]"):
                        print(line, flush=True)
                log.seek(0, os.SEEK_END)  # the child shares this offset: it writes on at the end
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    log.seek(0)
    raise SystemExit(f"the server did not start: {log.read()[-2000:]}")


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(float(m) for m in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M))


def thread_cpu(pid: int) -> tuple:
    """(CPU seconds of the process's threads the interpreter made: the HTTP thread, the engine
    thread, JAX's own; of the others: XLA's and the compiler's pools), from /proc per thread
    (threads that ended are not counted). XLA runs some programs on the thread that calls them
    (the dynamic engine's decode loop is almost all in its engine thread), so the first is not
    the Python work alone."""
    python = other = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            seconds = cpu_seconds(pid, tid)
        except OSError:
            continue
        python, other = (python + seconds, other) if name.startswith("python") else (python, other + seconds)
    return python, other


# -- the load generator: one thread, asyncio, keep-alive HTTP/1.1 ----------------------------------
# A real client runs on other machines; here it shares the 2 cores with the server it measures, so
# every CPU-second it spends is taken from the engines (both alike: it dilutes their ratio). It
# therefore does only what the measures need, on raw sockets: the status, when the first text
# arrived, the reply's usage (one JSON parse a request, not one a server-sent event).

class Client:
    """Keep-alive HTTP/1.1 connections to one server (``http://host:port``), reused across
    requests; a request on a connection the server closed meanwhile is sent again on a new one."""

    def __init__(self, url: str):
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.host, self.port, self.idle = host, int(port), []

    async def post(self, path: str, body: bytes, on_piece) -> int:
        """Sends ``body`` (JSON); ``on_piece`` gets each piece of the answer's body as it arrives
        (a streamed answer's chunks); returns the status."""
        head = (f"POST {path} HTTP/1.1\r\nhost: {self.host}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\n\r\n").encode() + body
        for attempt in (0, 1):
            reused = bool(self.idle)
            reader, writer = self.idle.pop() if reused else await asyncio.open_connection(self.host, self.port)
            try:
                writer.write(head)
                status, keep = await _answer(reader, on_piece)
            except (ConnectionError, asyncio.IncompleteReadError) as e:
                writer.close()
                if reused and attempt == 0 and getattr(e, "partial", b"") == b"":
                    continue  # the server closed an idle connection: not this request's failure
                raise
            (self.idle.append((reader, writer)) if keep else writer.close())
            return status

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle = []


async def _answer(reader: asyncio.StreamReader, on_piece) -> tuple:
    """Reads one HTTP/1.1 answer: (status, whether the connection stays open)."""
    head = (await reader.readuntil(b"\r\n\r\n")).lower()
    status = int(head[9:12])
    if b"transfer-encoding: chunked" in head:
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                await reader.readline()
                break
            on_piece((await reader.readexactly(size + 2))[:-2])
    else:
        on_piece(await reader.readexactly(int(re.search(rb"content-length: *(\d+)", head).group(1))))
    return status, b"connection: close" not in head


def _events(piece: bytes):
    """The JSON events of a piece of a server-sent event stream."""
    return [json.loads(line[6:]) for line in piece.split(b"\n\n") if line.startswith(b"data: {")]


async def one(client: Client, i: int, max_tokens: int, stream: bool) -> dict:
    """Sends request ``i``; returns its status, tokens, id and timings (seconds from sending).
    A stream's first text is the first event with text; its usage the event that carries it."""
    body = {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens, "temperature": 0.8, "seed": i,
            "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    start = time.perf_counter()
    out = {"sent": start, "stream": stream, "tokens": 0, "first": None}
    last = []

    def piece(data: bytes) -> None:
        if stream and out["first"] is None and any(e.get("choices") and e["choices"][0].get("text")
                                                   for e in _events(data)):
            out["first"] = time.perf_counter() - start
        if not stream or b'"usage": {' in data:
            last[:] = [data]
    try:
        out["status"] = await client.post("/v1/completions", json.dumps(body).encode(), piece)
    except (OSError, asyncio.IncompleteReadError, ValueError) as e:
        out.update(status=f"error {type(e).__name__}", done=time.perf_counter() - start)
        return out
    out["done"] = time.perf_counter() - start
    if out["status"] == 200 and last:
        answer = json.loads(last[0]) if not stream else [e for e in _events(last[0]) if e.get("usage")][-1]
        out.update(tokens=answer["usage"]["completion_tokens"], id=answer["id"])
    return out


def measured(load) -> tuple:
    """Runs the coroutine ``load`` (returning (results, start)) on a fresh event loop: (results,
    start, the load generator's CPU seconds: this process's, the servers being children)."""
    cpu = time.process_time()
    results, start = asyncio.run(load)
    return results, start, time.process_time() - cpu


def open_loop(url: str, rate: float, seconds: float, mix: Mix, seed: int) -> dict:
    """Poisson arrivals at ``rate`` per second for ``seconds``; waits for every answer."""
    async def arrivals():
        rng, client, tasks = random.Random(seed), Client(url), []
        start, t, i = time.perf_counter(), 0.0, 0
        while True:
            t += rng.expovariate(rate)
            if t > seconds:
                break
            await asyncio.sleep(max(0.0, start + t - time.perf_counter()))
            tasks.append(asyncio.create_task(one(client, seed * 100_000 + i, mix.draw(rng), rng.random() < 0.5)))
            i += 1
        results = await asyncio.gather(*tasks)
        client.close()
        return results, start
    return summary(*measured(arrivals()), seconds)


def closed_loop(url: str, clients: int, seconds: float, mix: Mix, seed: int) -> dict:
    """``clients`` clients, each sending its next request as soon as its last one is answered,
    for ``seconds``: with more clients than the server has rows, and a queue that holds the rest,
    the engine always has work waiting and nothing is refused, so the window measures the
    engine's capacity rather than the HTTP layer answering 429s.
    Request i has the same reply length, stream flag and seed for every engine."""
    rng = random.Random(seed)
    draws = [(mix.draw(rng), rng.random() < 0.5) for _ in range(100_000)]

    async def clients_loop():
        results, counter, start = [], iter(range(len(draws))), time.perf_counter()

        async def client_loop():
            client = Client(url)
            while time.perf_counter() - start < seconds:
                i = next(counter)
                results.append(await one(client, seed * 100_000 + i, *draws[i]))
            client.close()
        await asyncio.gather(*(client_loop() for _ in range(clients)))
        return results, start
    return summary(*measured(clients_loop()), seconds)


def quantile(values: list, q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def reply_lengths(tokens: list) -> tuple:
    """(min, mean, max) tokens of the replies: the load's real mix (a model's room or <eos> would
    cut the drawn lengths)."""
    return (min(tokens), round(sum(tokens) / len(tokens), 1), max(tokens)) if tokens else (0, 0.0, 0)


def summary(results: list, start: float, client_cpu: float, seconds: float) -> dict:
    """A window's figures; ``client_cpu``: the load generator's CPU seconds, printed per token
    received (its share of the CPU the window's figures were measured under)."""
    ok = [r for r in results if r["status"] == 200]
    # completions in the window's last two thirds: its start is the engine filling up (nothing
    # completes before the first replies are decoded, which on a loaded machine takes seconds)
    steady = seconds / 3
    in_window = [r for r in ok if steady < r["sent"] + r["done"] - start <= seconds]
    ttft = [r["first"] for r in ok if r["stream"] and r["first"] is not None]
    tpot = [(r["done"] - r["first"]) / (r["tokens"] - 1) for r in ok if r["stream"] and r["first"] is not None
            and r["tokens"] > 1]
    return {"sent": len(results), "ok": len(ok), "refused": sum(r["status"] == 429 for r in results),
            "tokens_per_s": sum(r["tokens"] for r in in_window) / (seconds - steady),
            "requests_per_s": len(in_window) / (seconds - steady),
            "whole_window_tokens_per_s": sum(r["tokens"] for r in ok if r["sent"] + r["done"] - start <= seconds) / seconds,
            "reply_tokens": reply_lengths([r["tokens"] for r in ok]),
            "ttft": (quantile(ttft, 0.5), quantile(ttft, 0.99)), "tpot": (quantile(tpot, 0.5), quantile(tpot, 0.99)),
            "latency": (quantile([r["done"] for r in ok], 0.5), quantile([r["done"] for r in ok], 0.99)),
            "client_cpu_ms_per_token": 1000 * client_cpu / max(sum(r["tokens"] for r in ok), 1)}


# -- the comparison and the flood -------------------------------------------------------------------

def compare(checkpoint: str, seconds: float, overload: float, slots: int, rounds: int, kind: str,
            old: str = "") -> tuple:
    """This tree's dynamic and continuous servers (and with ``old``, that tree's dynamic server:
    ``--old-dynamic``) up at once (an idle one costs nothing), their saturation windows taken in
    turn ``rounds`` times, the order rotated every round, so a change in the machine's other load
    hits every server alike: each server's saturation figure is its median window, each ratio
    the median of the rounds'. The half-load rate is half the capacity (requests/s) of the
    baseline dynamic server: ``old``'s when given (the issue's "today's"), else this tree's."""
    # closed loop: a queue of 2 x slots holds the 2 x slots clients' requests even while the engine
    # delivers a batch's replies before taking the next (a full queue would answer 429s)
    queue = slots if overload > 0 else 2 * slots
    servers = {b: start_server(checkpoint, b, slots, queue=queue) for b in ("dynamic", "continuous")}
    try:
        if old:
            servers[old_label(old)] = start_server(checkpoint, "dynamic", slots, queue, root=old)
        mix = mix_of(servers["dynamic"][1], kind)
        windows = saturation_rounds(servers, overload, slots, seconds, mix, rounds, alternate=bool(old))
        basis = old_label(old) if old else "dynamic"
        capacity = median([w["requests_per_s"] for w in windows[basis]])  # the baseline's, for all
        halves = half_loads(servers, capacity / 2, seconds, mix, rounds, alternate=bool(old))
        rows = []
        for batching in servers:
            saturated = sorted(windows[batching], key=lambda w: w["tokens_per_s"])[len(windows[batching]) // 2]
            rows.append((batching, saturated, merge_halves(halves[batching]), capacity / 2))
        ratios = round_ratios(windows, old_label(old) if old else "")
        cpu = {b: median([w["server_cpu_ms_per_token"] for w in windows[b]]) for b in windows}
        print(f"[bench_serve] server CPU ms per generated token at saturation (median): {cpu}", flush=True)
        python = {b: median([w["server_python_ms_per_token"] for w in windows[b]]) for b in windows}
        print(f"[bench_serve] of which the interpreter's threads' (HTTP, engine, and XLA programs run on "
              f"them; median): {python}", flush=True)
        print(f"[bench_serve] {client_share(windows)}", flush=True)
        return rows, ratios, mix, basis
    finally:
        stop_servers(servers)


def old_label(old: str) -> str:
    """The name of ``--old-dynamic DIR``'s server in the output: ``dynamic (DIR's last folder)``."""
    return f"dynamic ({os.path.basename(os.path.normpath(old))})"


def round_ratios(windows: dict, old: str = "") -> dict:
    """Completed tokens/s ratios of the saturation windows, round by round: continuous / this
    tree's dynamic, and with ``old`` (the older tree's dynamic server's name in ``windows``)
    continuous / old and this tree's dynamic / old. {label: [ratio of round 1, 2, ...]}."""
    pairs = [("continuous", "dynamic")] + ([("continuous", old), ("dynamic", old)] if old else [])
    ratios = {}
    for new, base in pairs:
        label = f"{new} / {base}" if old else "continuous / dynamic"
        ratios[label] = [n["tokens_per_s"] / max(b["tokens_per_s"], 1e-9) for n, b in zip(windows[new],
                                                                                          windows[base])]
    return ratios


def saturation_rounds(servers: dict, overload: float, slots: int, seconds: float, mix: Mix, rounds: int,
                      alternate: bool = False) -> dict:
    """``rounds`` saturation windows per server, taken in turn (the same requests for all in a
    round), each with the server's CPU seconds per generated token; ``alternate``: the servers'
    order rotated every round (no server always first; with two, reversed every other round)."""
    windows = {b: [] for b in servers}
    for r in range(rounds):
        for batching in round_order(list(servers), r if alternate else 0):
            proc, url = servers[batching]
            cpu, made = cpu_seconds(proc.pid), metric(url, "nety_generated_tokens_total")
            threads = thread_cpu(proc.pid)
            windows[batching].append(saturate(url, overload, slots, seconds, mix, seed=1 + r))
            made = max(metric(url, "nety_generated_tokens_total") - made, 1)
            window = windows[batching][-1]
            window["server_cpu_ms_per_token"] = 1000 * (cpu_seconds(proc.pid) - cpu) / made
            window["server_python_ms_per_token"], window["server_xla_ms_per_token"] = (
                1000 * (after - before) / made for after, before in zip(thread_cpu(proc.pid), threads))
            print(f"[bench_serve] {batching} {slots} slots, round {r + 1}: saturation {windows[batching][-1]}",
                  flush=True)
    return windows


def round_order(names: list, r: int) -> list:
    """The servers' order in round ``r``: ``names`` rotated by ``r``."""
    k = r % len(names)
    return names[k:] + names[:k]


def sweep(checkpoint: str, seconds: float, counts: list, rounds: int, kind: str) -> str:
    """Saturation (closed loop) of both engines at each slot count (the dynamic engine's max
    batch = the continuous engine's slots), both servers of a count up together, their windows
    in turn: the ratio at EQUAL slots per count, and each engine at its own best count."""
    lines = ["| slots | dynamic tokens/s | continuous tokens/s | continuous / dynamic (rounds) | "
             "server CPU ms/token dynamic / continuous |", "|---|---|---|---|---|"]
    best = {}
    for slots in counts:
        servers = {b: start_server(checkpoint, b, slots, queue=2 * slots) for b in ("dynamic", "continuous")}
        try:
            mix = mix_of(servers["dynamic"][1], kind)
            windows = saturation_rounds(servers, 0, slots, seconds, mix, rounds)
        finally:
            stop_servers(servers)
        tps = {b: median([w["tokens_per_s"] for w in windows[b]]) for b in windows}
        cpu = {b: median([w["server_cpu_ms_per_token"] for w in windows[b]]) for b in windows}
        ratios = [c["tokens_per_s"] / max(d["tokens_per_s"], 1e-9) for d, c in zip(windows["dynamic"],
                                                                                   windows["continuous"])]
        lines.append(f"| {slots} | {tps['dynamic']:,.0f} | {tps['continuous']:,.0f} | {median(ratios):.2f}x "
                     f"({', '.join(f'{r:.2f}' for r in ratios)}) | {cpu['dynamic']:.3f} / {cpu['continuous']:.3f} |")
        for b in tps:
            best[b] = max(best.get(b, (0, 0)), (tps[b], slots))
    (d, ds), (c, cs) = best["dynamic"], best["continuous"]
    return "\n".join(lines) + (f"\n\n{mix.describe(counts)}\neach engine at its best slot count (NOT an equal-slot "
                               f"comparison): continuous {c:,.0f} tokens/s at {cs} slots / dynamic {d:,.0f} at {ds} = "
                               f"{c / max(d, 1e-9):.2f}x")


def client_share(windows: dict) -> str:
    """The load generator's CPU per token received at saturation (median per engine): CPU the
    servers did not get on this shared machine."""
    each = ", ".join(f"{b} {median([w['client_cpu_ms_per_token'] for w in windows[b]]):.4f}" for b in windows)
    return f"load generator CPU ms per token received at saturation (median): {each}"


def mix_of(url: str, kind: str) -> Mix:
    """The reply-length mix for a server: from 8 to 256 tokens, at most the model's room."""
    return Mix(kind, min(int(httpx.get(f"{url}/health").json()["max_tokens"]), LONGEST))


def against(checkpoint: str, other: str, seconds: float, slots: int, rounds: int, kind: str,
            engine: str = "continuous") -> str:
    """``engine`` servers of this tree and of ``other`` (another checkout: the code before a
    change) side by side, their closed-loop saturation windows in turn: tokens/s and server
    CPU per generated token of each, every round (a same-run A/B of two versions; which server
    goes first alternates between rounds)."""
    servers = {name: start_server(checkpoint, engine, slots, 2 * slots, root)
               for name, root in (("this tree", ROOT), ("other", os.path.abspath(other)))}
    try:
        mix = mix_of(servers["this tree"][1], kind)
        windows = saturation_rounds(servers, 0, slots, seconds, mix, rounds, alternate=True)
    finally:
        stop_servers(servers)
    lines = [f"| round | this tree tokens/s | {other} tokens/s | ratio | server CPU ms/token this / other | "
             "of which the interpreter's threads this / other |", "|---|---|---|---|---|---|"]
    for r, (new, old) in enumerate(zip(windows["this tree"], windows["other"])):
        lines.append(f"| {r + 1} | {new['tokens_per_s']:,.0f} | {old['tokens_per_s']:,.0f} | "
                     f"{new['tokens_per_s'] / max(old['tokens_per_s'], 1e-9):.2f}x | "
                     f"{new['server_cpu_ms_per_token']:.3f} / {old['server_cpu_ms_per_token']:.3f} | "
                     f"{new['server_python_ms_per_token']:.3f} / {old['server_python_ms_per_token']:.3f} |")
    cpu = {n: median([w["server_cpu_ms_per_token"] for w in windows[n]]) for n in windows}
    return "\n".join(lines) + (f"\n\n{mix.describe([slots])}\nmedian server CPU ms per generated token: this tree "
                               f"{cpu['this tree']:.3f}, {other} {cpu['other']:.3f} "
                               f"({cpu['other'] / max(cpu['this tree'], 1e-9):.2f}x less with this tree)\n"
                               f"{client_share(windows)}")


def stop_servers(servers: dict) -> None:
    for proc, _ in servers.values():
        proc.terminate()
        proc.wait(timeout=30)


def half_loads(servers: dict, rate: float, seconds: float, mix: Mix, rounds: int, alternate: bool = False) -> dict:
    """``rounds`` open-loop windows per server at ``rate``, taken in turn: the same arrivals for
    every server in a round, other ones each round (a p99 over one window is a few requests);
    ``alternate``: the order rotated every round."""
    halves = {b: [] for b in servers}
    for r in range(rounds):
        for batching in round_order(list(servers), r if alternate else 0):
            url = servers[batching][1]
            mark(f"{batching} half-load window {r + 1} starts")
            halves[batching].append(open_loop(url, max(rate, 0.05), seconds, mix, seed=100 + r))
            mark(f"{batching} half-load window {r + 1} ends")
            print(f"[bench_serve] {batching} round {r + 1}: half {halves[batching][-1]}", flush=True)
    return halves


def merge_halves(windows: list) -> dict:
    """The half-load windows of one engine: each quantile the median of the windows' (and every
    window's p99 time to first token, to show the spread), the requests sent and refused (429:
    not in the quantiles) summed over the windows."""
    merged = dict(windows[len(windows) // 2])
    for key in ("ttft", "tpot", "latency"):
        merged[key] = tuple(median([w[key][q] for w in windows]) for q in (0, 1))
    merged["ttft_p99s"] = [w["ttft"][1] for w in windows]
    merged["sent"], merged["refused"] = (sum(w[key] for w in windows) for key in ("sent", "refused"))
    return merged


def saturate(url: str, overload: float, slots: int, seconds: float, mix: Mix, seed: int) -> dict:
    """A saturation window: ``overload`` open-loop arrivals per second, or (0) closed loop with
    2 x ``slots`` clients (the slots full and as many requests waiting)."""
    if overload > 0:
        return open_loop(url, overload, seconds, mix, seed)
    return closed_loop(url, 2 * slots, seconds, mix, seed)


def mark(text: str) -> None:
    """A line in the --trace file (the servers write theirs there too)."""
    if os.environ.get("NETY_BENCH_TRACE"):
        with open(os.environ["NETY_BENCH_TRACE"], "a") as out:
            out.write(f"{time.time():.3f} bench {text}\n")


def median(values: list) -> float:
    return sorted(values)[len(values) // 2]


def flood(checkpoint: str, n: int, clients: int = 128) -> dict:
    proc, url = start_server(checkpoint, "continuous", slots=16, queue=16)
    try:
        before = metric(url, "nety_generated_tokens_total")
        codes, ids, tokens, rss = {}, [], [0], [status_mb("VmRSS", proc.pid)]
        counter = iter(range(n))

        async def client_loop():
            client = Client(url)
            for i in counter:
                r = await one(client, i, 2 + i % 7, i % 2 == 0)
                codes[r["status"]] = codes.get(r["status"], 0) + 1
                if r["status"] == 200:
                    ids.append(r.get("id"))
                    tokens[0] += r["tokens"]
                if sum(codes.values()) % 1000 == 0:
                    rss.append(status_mb("VmRSS", proc.pid))
            client.close()

        async def clients_loop():
            await asyncio.gather(*(client_loop() for _ in range(clients)))
        elapsed = timed(lambda: asyncio.run(clients_loop()))
        generated = metric(url, "nety_generated_tokens_total") - before
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"requests": n, "answered": sum(codes.values()), "codes": codes, "unique_ids": len(set(ids)) == len(ids),
            "tokens_received": tokens[0], "tokens_generated": int(generated), "rss_mb": rss, "seconds": elapsed}


def table(model: str, rows: list, ratios: dict) -> str:
    ms = lambda pair: f"{pair[0] * 1000:.0f} / {pair[1] * 1000:.0f} ms"
    lines = [f"| {model} | saturation tokens/s | half load (req/s) | half load refused (429) / sent | TTFT p50 / p99 "
             "| per-token p50 / p99 | latency p50 / p99 |", "|---|---|---|---|---|---|---|"]
    for batching, sat, half, rate in rows:
        lines.append(f"| {batching} | {sat['tokens_per_s']:,.0f} | {rate:.2f} | {half['refused']} / {half['sent']} | "
                     f"{ms(half['ttft'])} | {ms(half['tpot'])} | {half['latency'][0]:.1f} / {half['latency'][1]:.1f} s |")
    p99s = "; ".join(f"{b} " + ", ".join(f"{t * 1000:.0f}" for t in half["ttft_p99s"]) for b, _, half, _ in rows)
    return "\n".join(lines) + "\n\n" + ratio_lines(ratios) + (
        f"\nhalf-load TTFT p99 of each round (ms; the table gives the medians): {p99s}\nload generator CPU ms "
        "per token received (median saturation window): "
        + ", ".join(f"{b} {sat['client_cpu_ms_per_token']:.4f}" for b, sat, _, _ in rows))


def ratio_lines(ratios: dict) -> str:
    """One line per ratio: its median over the rounds, then each round's."""
    return "\n".join(f"{label} completed tokens/s at saturation: {median(each):.2f}x (median of {len(each)} "
                     f"rounds: {', '.join(f'{r:.2f}x' for r in each)})" for label, each in ratios.items())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("demo", "gpt"), default="demo")
    p.add_argument("--checkpoint", default="", help="a run directory (default: per --model)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each load window")
    p.add_argument("--overload", type=float, default=0.0,
                   help="saturation as open-loop arrivals per second (0: closed loop, 2 x --slots clients)")
    p.add_argument("--slots", type=int, default=32, help="continuous slots = dynamic max batch = queue size")
    p.add_argument("--rounds", type=int, default=3,
                   help="saturation windows per engine, taken in turn (the machine's load drifts)")
    p.add_argument("--flood", type=int, default=0, help="requests of the flood check (0: none)")
    p.add_argument("--only-flood", action="store_true")
    p.add_argument("--sweep", default="", help="slot counts, e.g. 8,16,32: saturation of both engines at "
                   "each (instead of the half-load comparison)")
    p.add_argument("--trace", default="", help="a file for diagnostics of slow first tokens: compiles after "
                   "the warm-up, garbage-collector pauses, slow requests with their wait in the queue")
    p.add_argument("--mix", choices=("uniform", "loguniform"), default="uniform",
                   help="reply lengths from 8 to 256 tokens: uniform (default), or loguniform (many short "
                   "replies and few long, closer to chat traffic)")
    p.add_argument("--against", default="", help="another checkout (e.g. a git worktree of the code before a "
                   "change): its continuous server against this tree's, saturation rounds only (an A/B)")
    p.add_argument("--against-engine", choices=("continuous", "dynamic"), default="continuous",
                   help="--against: which engine the two checkouts' servers run")
    p.add_argument("--old-dynamic", default="", metavar="DIR",
                   help="a third server in the default comparison: the dynamic server of another tree (e.g. "
                   "the issue-day commit: git archive 8f4c995 | tar -x -C DIR), in the same rounds; ratios "
                   "against both dynamic servers, half load at half DIR's capacity")
    p.add_argument("--admit-batch", type=int, default=0,
                   help="the continuous servers' --admit-batch (0: their default; a tree without it ignores it)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--batching", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--queue", type=int, default=32, help=argparse.SUPPRESS)
    return p


def check_args(args) -> str:
    """A one-line error for options that do not go together or a tree that is none; "" if fine."""
    if args.old_dynamic and (args.against or args.sweep or args.only_flood):
        return "--old-dynamic adds a server to the default comparison: not with --against, --sweep or --only-flood"
    slots = min([args.slots] + [int(n) for n in args.sweep.split(",") if n.strip().isdigit()])
    if not 0 <= args.admit_batch <= slots:
        return f"--admit-batch={args.admit_batch} must be between 0 (the servers' default) and the fewest slots ({slots})"
    for flag, tree in (("--old-dynamic", args.old_dynamic), ("--against", args.against)):
        if tree and not os.path.isfile(os.path.join(tree, "nety_jax", "serving", "server.py")):
            return (f"{flag}={tree}: not a nety-jax tree (no nety_jax/serving/server.py); make one with "
                    f"`git archive COMMIT | tar -x -C {tree}`")
    return ""


def main() -> int:
    p = parser()
    args = p.parse_args()
    if args.child:
        as_the_command_runs()
        return child(args)
    if check_args(args):
        p.error(check_args(args))
    checkpoint = checkpoint_for(args.model, args.checkpoint)
    if args.trace:
        os.environ["NETY_BENCH_TRACE"] = os.path.abspath(args.trace)
    if args.admit_batch:
        os.environ["NETY_BENCH_ADMIT_BATCH"] = str(args.admit_batch)
    if args.against:
        ab = against(checkpoint, args.against, args.seconds, args.slots, args.rounds, args.mix, args.against_engine)
        print(f"\n{args.model} ({checkpoint}), {args.against_engine} servers, {args.seconds:g} s closed-loop windows, "
              f"{args.rounds} rounds, {args.slots} slots\n\n{ab}")
    elif args.sweep:
        counts = [int(n) for n in args.sweep.split(",")]
        print(f"\n{args.model} ({checkpoint}), {args.seconds:g} s closed-loop windows, {args.rounds} rounds\n\n"
              f"{sweep(checkpoint, args.seconds, counts, args.rounds, args.mix)}")
    elif not args.only_flood:
        rows, ratios, mix, basis = compare(checkpoint, args.seconds, args.overload, args.slots, args.rounds, args.mix,
                                           args.old_dynamic)
        lengths = {name: sat for name, sat, _, _ in rows}["continuous"]["reply_tokens"]
        print(f"\n{args.model} ({checkpoint}), {args.seconds:g} s windows, {mix.describe([args.slots])}, "
              f"half streamed; replies completed at saturation: min {lengths[0]}, mean {lengths[1]}, max "
              f"{lengths[2]} tokens; half load: half the {basis} server's capacity"
              f"{f' ({args.old_dynamic})' if args.old_dynamic else ''}\n\n{table(args.model, rows, ratios)}")
    if args.flood:
        result = flood(checkpoint, args.flood)
        print(f"\nflood: {json.dumps(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
