"""Load on the HTTP server: N concurrent clients for a fixed time, batched vs one request at a time.

    python scripts/bench_serve.py [--checkpoint runs/demo] [--clients 16] [--seconds 20]

Starts `nety-jax serve` on localhost twice in one run: with dynamic batching
(--max-batch 32) and one request at a time (--max-batch 1). Each time it first
sends bursts of 1, 2, 4, ... concurrent requests (every batch bucket compiles
once), then runs the clients and reports requests/s, generated tokens/s, p50 and
p99 latency and the mean batch size (from the server's /metrics).
"""
from __future__ import annotations

import argparse
import concurrent.futures as futures
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["Bonjour !", "Comment tu t'appelles ?", "Je me sens fatigué ce soir.", "Quel temps fait-il à Lyon ?",
           "J'aime jouer de la guitare.", "Qu'est-ce que je peux cuisiner avec des œufs ?", "Merci beaucoup !",
           "Combien font 3 plus 4 ?"]


def ensure_checkpoint(path: str) -> str:
    from demo_run import demo_run
    return demo_run(path, 60, "bench_serve", warmup=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: str, max_batch: int, max_tokens: int):
    port = free_port()
    output = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen([sys.executable, "-m", "nety_jax.cli", "serve", "--checkpoint", checkpoint,
                             "--port", str(port), "--max-batch", str(max_batch), "--queue-size", "1024",
                             "--max-tokens", str(max_tokens)], cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            break
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    output.seek(0)
    raise SystemExit(f"the server did not start: {output.read()[-2000:]}")


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(float(m) for m in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M))


def request(client: httpx.Client, url: str, i: int, max_tokens: int):
    body = {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens, "temperature": 0.8, "seed": i}
    start = time.perf_counter()
    r = client.post(f"{url}/v1/completions", json=body, timeout=300)
    r.raise_for_status()
    return time.perf_counter() - start, r.json()["usage"]["completion_tokens"]


def warm_up(url: str, clients: int, max_tokens: int) -> None:
    size = 1
    with httpx.Client() as client:
        while size <= max(clients, 1):
            with futures.ThreadPoolExecutor(size) as pool:
                list(pool.map(lambda i: request(client, url, i, max_tokens), range(size)))
            size *= 2


def load(url: str, clients: int, seconds: float, max_tokens: int) -> dict:
    latencies, tokens, lock = [], [0], threading.Lock()
    deadline = time.perf_counter() + seconds

    def client_loop(c: int):
        with httpx.Client() as client:
            i = c
            while time.perf_counter() < deadline:
                latency, n = request(client, url, i, max_tokens)
                with lock:
                    latencies.append(latency)
                    tokens[0] += n
                i += clients

    before = metric(url, "nety_batch_size_sum"), metric(url, "nety_batch_size_count")
    start = time.perf_counter()
    with futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(client_loop, range(clients)))
    elapsed = time.perf_counter() - start
    rows = metric(url, "nety_batch_size_sum") - before[0]
    batches = metric(url, "nety_batch_size_count") - before[1]
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [latencies[0]] * 99
    return {"requests_per_s": len(latencies) / elapsed, "tokens_per_s": tokens[0] / elapsed,
            "p50_s": q[49], "p99_s": q[98], "mean_batch": rows / max(batches, 1), "requests": len(latencies)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=os.path.join(ROOT, "runs", "demo"))
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--max-tokens", type=int, default=24)
    args = p.parse_args()
    checkpoint = ensure_checkpoint(args.checkpoint)
    rows = []
    for label, max_batch in (("dynamic batching (max batch 32)", 32), ("one request at a time", 1)):
        proc, url = start_server(checkpoint, max_batch, args.max_tokens)
        try:
            print(f"[bench_serve] {label}: warming up ...", flush=True)
            warm_up(url, args.clients if max_batch > 1 else 1, args.max_tokens)
            rows.append((label, load(url, args.clients, args.seconds, args.max_tokens)))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"\n{args.clients} concurrent clients for {args.seconds:g} s each, max_tokens {args.max_tokens}, "
          f"model {checkpoint}\n")
    print("| serving | requests/s | tokens/s | p50 latency | p99 latency | mean batch |")
    print("|---|---|---|---|---|---|")
    for label, r in rows:
        print(f"| {label} | {r['requests_per_s']:.1f} | {r['tokens_per_s']:,.0f} | {r['p50_s']:.2f} s | "
              f"{r['p99_s']:.2f} s | {r['mean_batch']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
