"""Our `gpt` (configs/gpt2_124m.yaml) against HuggingFace `GPT2LMHeadModel` in PyTorch.

    python scripts/bench_gpt.py [--tiny] [--batch 8] [--len 256] [--dtype float32] [--hf-compile]
                                [--gen 1:greedy 1:topk 64:topk] [--new-tokens 64] [--repeats 3]
                                [--skip-hf] [--skip-gen] [--skip-import] [--json FILE]
                                [--arrangement processes|shared] [--hf-malloc default|keep]

- training: one AdamW step (clipping at train.clip_norm, the same learning rate, betas,
  epsilon and weight decay; dropout as the config says, in both) on the same batch of
  random token ids; HF eager or ``torch.compile``-d; the loss is the same mean cross-entropy;
- generation: N new tokens after a prompt of random ids, at batch B, greedy or top-k 50
  (temperature 1), every row forced to N tokens; HF ``generate`` with its KV cache
  (dynamic cache eager; static cache under --hf-compile); batch-1 rows (about a second a
  call) run at least B1_MIN_ROUNDS rounds whatever --repeats says;
- MFU from the analytic FLOPs of scripts/flops.py over a matmul peak, and the fraction of the
  weight-bandwidth bound (tokens/s if a step only read the weights once, at the memory
  bandwidth of a 256 MB copy by one thread or by every core, whichever is faster). Both
  references are measured BETWEEN the rounds they judge, as one more function in the same
  alternation (the train step and batch > 1 rows: the peak; batch-1 rows: the bandwidth), so a
  reference sees the same load as what it judges; scripts/bench.py, which calls the parts
  without references, passes its machine part's;
- `nety-jax import-hf` of a GPT-2 124M-size directory made here (scripts/bench_import_hf.py):
  wall and CPU seconds of the command in a fresh process (--skip-import: not timed);
- ``targets``: each target of issue #26 with its value and whether it is met.

HF's GPT-2 config is made to match ours where GPT-2 allows: the same sizes, vocabulary,
context, dropout, tied or untied head, tanh GELU, LayerNorm epsilon; GPT-2 always has q/k/v
biases (our gpt2_124m has none). Compute dtype: ours is model.dtype (float32 parameters);
HF runs under ``torch.autocast`` for bfloat16 (float32 parameters too). The platform is
whatever JAX and PyTorch find (PyTorch uses CUDA when it sees it).

Each framework runs in a process of its own (``--arrangement processes``, the default), started
for the train rows and again for the generation rows; this process sends each a request per
round and they take turns (the machine is shared: a slow moment hits both), as scripts/bench.py
runs NETY's PyTorch step. Each process warms up its own step (compilation) before the timed
rounds. Ours runs with glibc's malloc as `nety-jax` sets it (runtime.keep_host_memory), HF's as
a PyTorch user's process gets it (``--hf-malloc keep``: ours too). In one shared process
(``--arrangement shared``, the arrangement before 2026-12-05) our step ran slower right after
PyTorch's than alone (docs/PERFORMANCE.md). The references (matmul peak, copy) are timed in
this process between the rounds. Medians over rounds, warm-up excluded. Prints one JSON object
(``--json FILE`` also writes it).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench_util import peak_rss_mb, timed  # noqa: E402
from flops import gpt_decode_weight_bytes, gpt_generate_flops, gpt_train_step_flops  # noqa: E402

THREADS = os.cpu_count() or 1
TINY_SIZES = ["model.d_model=64", "model.heads=4", "model.layers=2", "model.d_ff=256", "model.max_len=128",
              "model.vocab_size=256", "data.seq_len=16",
              "decode.max_new_tokens=8"]
MODES = ("greedy", "topk")  # top-k 50 at temperature 1, no nucleus cut
# a batch-1 call takes about a second: its rows get at least this many rounds, so that one
# disturbed round (another session's burst) does not move a median of two
B1_MIN_ROUNDS = 5


def gpt_config(tiny: bool = False, dtype: str = "float32", extra=()):
    """configs/gpt2_124m.yaml (or its tiny version) with the benchmark's compute dtype."""
    from nety_jax.config import load_config
    sets = [f"model.dtype={dtype}", "train.schedule=constant", "train.warmup_steps=0", *extra]
    return load_config(os.path.join(ROOT, "configs", "gpt2_124m.yaml"), (TINY_SIZES if tiny else []) + sets)


def token_batch(vocab: int, batch: int, length: int, seed: int = 0) -> np.ndarray:
    """(batch, length + 1) random ids past our special ids: inputs [:, :-1], targets [:, 1:]."""
    return np.random.default_rng(seed).integers(4, vocab, (batch, length + 1)).astype(np.int32)


# -- PyTorch side ----------------------------------------------------------------------------------
def torch_device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_sync(device: str) -> None:
    import torch
    if device == "cuda":
        torch.cuda.synchronize()


def hf_model(m, device: str):
    """A randomly initialised GPT2LMHeadModel of our config's sizes (float32 parameters)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=m.vocab_size, n_positions=m.max_len, n_embd=m.d_model, n_layer=m.layers,
                     n_head=m.heads, n_inner=m.d_ff, activation_function="gelu_new",
                     resid_pdrop=m.dropout, embd_pdrop=m.dropout, attn_pdrop=m.attention_dropout,
                     layer_norm_epsilon=1e-5, tie_word_embeddings=m.tie_output, bos_token_id=1,
                     eos_token_id=2, pad_token_id=0)
    return GPT2LMHeadModel(cfg).to(device)


def _autocast(device: str, dtype: str):
    import contextlib
    import torch
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=getattr(torch, dtype))


class HFTrainer:
    """GPT2LMHeadModel's AdamW step as a PyTorch user writes it (eager, or torch.compile-d)."""

    def __init__(self, cfg, tokens: np.ndarray, compile: bool = False, device: str = ""):
        import torch
        self.torch, self.device, self.dtype = torch, device or torch_device(), cfg.model.dtype
        model = hf_model(cfg.model, self.device).train()
        t = cfg.train
        self.opt = torch.optim.AdamW(model.parameters(), lr=t.learning_rate, betas=(t.b1, t.b2), eps=t.eps,
                                     weight_decay=t.weight_decay)
        self.params, self.clip = list(model.parameters()), t.clip_norm
        self.model = torch.compile(model) if compile else model
        seq = torch.from_numpy(tokens).long().to(self.device)
        self.inputs, self.targets = seq[:, :-1], seq[:, 1:]

    def _step(self) -> None:
        with _autocast(self.device, self.dtype):
            logits = self.model(input_ids=self.inputs).logits
        loss = self.torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                                      self.targets.reshape(-1))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip > 0:
            self.torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.opt.step()

    def steps(self, k: int) -> None:
        for _ in range(k):
            self._step()
        torch_sync(self.device)


class HFGenerator:
    """HF ``generate`` with its KV cache; every row forced to ``new_tokens`` tokens."""

    def __init__(self, cfg, new_tokens: int, prompt_len: int, compile: bool = False, device: str = ""):
        import torch
        self.torch, self.device, self.dtype = torch, device or torch_device(), cfg.model.dtype
        self.model = hf_model(cfg.model.replace(dropout=0.0, attention_dropout=0.0), self.device).eval()
        self.kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
        if compile:  # HF's documented route: a static cache and a compiled forward
            self.kw["cache_implementation"] = "static"
            self.model.forward = torch.compile(self.model.forward)
        self.vocab, self.prompt_len = cfg.model.vocab_size, prompt_len

    def call(self, batch: int, mode: str):
        prompt = self.torch.from_numpy(token_batch(self.vocab, batch, self.prompt_len - 1, seed=batch)).long()
        sampling = dict(do_sample=False) if mode == "greedy" else dict(do_sample=True, top_k=50, top_p=1.0,
                                                                       temperature=1.0)
        with self.torch.no_grad(), _autocast(self.device, self.dtype):
            out = self.model.generate(prompt.to(self.device), attention_mask=self.torch.ones_like(prompt).to(
                self.device), **self.kw, **sampling)
        torch_sync(self.device)
        return out


# -- our side --------------------------------------------------------------------------------------
class OurTrainer:
    """Our jitted train step, as `nety-jax train` runs it."""

    def __init__(self, cfg, tokens: np.ndarray):
        from nety_jax.models import get_model
        from nety_jax.training.parallel import Runner
        from nety_jax.training.steps import create_train_state
        self.model = get_model(cfg.model)
        self.state = create_train_state(self.model, cfg.train, jax.random.PRNGKey(0))
        self.runner = Runner(cfg, self.model, "none")
        self.batch = {"tokens": tokens[:, :-1], "targets": tokens[:, 1:]}

    def steps(self, k: int) -> None:
        for _ in range(k):
            self.state, metrics = self.runner.train(self.state, self.batch)
        jax.block_until_ready(metrics)


class OurGenerator:
    """Our generate (decoding.generate_jit, as `nety-jax complete` runs it), forced to N tokens."""

    def __init__(self, cfg, new_tokens: int, prompt_len: int):
        from nety_jax.decoding import LoopSpec
        from nety_jax.models import get_model
        self.model = get_model(cfg.model.replace(dropout=0.0, attention_dropout=0.0))
        self.variables = self.model.init(jax.random.PRNGKey(0))
        self.spec = LoopSpec(max_new_tokens=new_tokens, top_k_max=64, ignore_eos=True)
        self.prompt_len = prompt_len

    def call(self, batch: int, mode: str):
        from nety_jax.decoding import SamplingParams, generate_jit
        prompt = jnp.asarray(token_batch(self.model.cfg.vocab_size, batch, self.prompt_len - 1, seed=batch))
        params = SamplingParams.create(batch, temperature=0.0 if mode == "greedy" else 1.0,
                                       top_k=0 if mode == "greedy" else 50, top_p=1.0, seed=batch)
        out = generate_jit(self.variables, prompt, jnp.full((batch,), self.prompt_len, jnp.int32), params,
                           model=self.model, spec=self.spec)
        return jax.block_until_ready(out["tokens"])


# -- measuring -------------------------------------------------------------------------------------
class References:
    """The machine's references, measured BETWEEN the rounds they judge (the machine is shared:
    a reference taken minutes earlier sees another load): the matmul peak through JAX (MFU) and
    the memory bandwidth (the weight-bandwidth bound), each as its own function in ``alternate``."""

    def __init__(self, dtype: str, tiny: bool):
        n = 512 if tiny else (8192 if jax.default_backend() == "gpu" else 2048)
        self.n, self.a = n, jnp.ones((n, n), jnp.dtype(dtype))
        self.mm = jax.jit(lambda x: x @ x @ x @ x @ x)
        size = (16 if tiny else 256) << 20
        self.src, self.dst = np.ones(size // 4, np.float32), np.empty(size // 4, np.float32)
        self.parts = list(zip(np.array_split(self.src, THREADS), np.array_split(self.dst, THREADS)))
        self.pool = None
        if jax.default_backend() != "cpu":
            self.x, self.cp = jnp.ones(size // 4, jnp.float32), jax.jit(lambda v: v + 1.0)

    def matmul(self) -> None:
        jax.block_until_ready(self.mm(self.a))

    def copy(self) -> float:
        """Seconds of the faster copy: by one thread or by THREADS threads (NumPy lets go of the
        GIL while it copies); on an accelerator, a jitted elementwise pass over the array."""
        if jax.default_backend() != "cpu":
            return timed(lambda: jax.block_until_ready(self.cp(self.x)))
        from concurrent.futures import ThreadPoolExecutor
        self.pool = self.pool or ThreadPoolExecutor(THREADS)
        one = timed(lambda: np.copyto(self.dst, self.src))
        return min(one, timed(lambda: list(self.pool.map(lambda p: np.copyto(p[1], p[0]), self.parts))))

    def gflops(self, seconds: float) -> float:
        return 4 * 2 * self.n ** 3 / seconds / 1e9

    def copy_gbs(self, seconds: float) -> float:
        """Bytes read and written per second: ``seconds`` of the faster copy."""
        return 2 * self.src.nbytes / seconds / 1e9


def alternate(fns: dict, repeats: int, warm=()) -> dict:
    """Median seconds of each function, called in turns round by round (after one warm-up call
    each but those named in ``warm``). A function may return its own seconds (a reference timing
    only part of its work, or a process of its own timing its step)."""
    for name, fn in fns.items():
        if name not in warm:
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            own = fn()
            times[name].append(own if isinstance(own, float) else time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def with_references(fns: dict, refs: "References | None", kinds: tuple) -> dict:
    """``fns`` plus the reference functions named in ``kinds`` ("matmul", "copy")."""
    if refs is None:
        return fns
    extra = {"matmul": refs.matmul, "copy": refs.copy}
    return {**fns, **{f"ref_{k}": extra[k] for k in kinds}}


def reference_values(seconds: dict, refs: "References | None") -> dict:
    """The references' medians as ``peak_gflops`` / ``copy_gbs`` (popped from ``seconds``)."""
    out = {}
    if "ref_matmul" in seconds:
        out["peak_gflops"] = refs.gflops(seconds.pop("ref_matmul"))
    if "ref_copy" in seconds:
        out["copy_gbs"] = refs.copy_gbs(seconds.pop("ref_copy"))
    return out


# -- each framework's side, in a worker process ------------------------------------------------------
class LocalSide:
    """One framework (``ours`` or ``hf``) in the process it is made in (a Worker's): answers
    requests (``train`` at a batch and length, ``generate`` at a batch and mode) with the
    seconds of one step or call. A request builds what it needs the first time (the build is
    not timed; the first step's compilation is, in the first request's seconds)."""

    def __init__(self, side: str, cfg, new_tokens: int = 0, prompt_len: int = 0, hf_compile: bool = False):
        self.side, self.cfg, self.hf_compile = side, cfg, hf_compile
        self.new_tokens, self.prompt_len = new_tokens, prompt_len
        self.trainers, self.generator = {}, None

    def _trainer(self, batch: int, length: int):
        key = (batch, length)
        if key not in self.trainers:
            tokens = token_batch(self.cfg.model.vocab_size, batch, length)
            self.trainers[key] = OurTrainer(self.cfg, tokens) if self.side == "ours" else \
                HFTrainer(self.cfg, tokens, compile=self.hf_compile)
        return self.trainers[key]

    def _generator(self):
        if self.generator is None:
            self.generator = OurGenerator(self.cfg, self.new_tokens, self.prompt_len) if self.side == "ours" else \
                HFGenerator(self.cfg, self.new_tokens, self.prompt_len, compile=self.hf_compile)
        return self.generator

    def request(self, op: str, batch: int, length: int = 0, mode: str = "") -> float:
        if op == "train":
            trainer = self._trainer(batch, length)
            return timed(lambda: trainer.steps(1))
        generator = self._generator()
        return timed(lambda: generator.call(batch, mode))

class Worker:
    """A process of its own (``bench_gpt.py --serve SIDE...``) holding one framework's side, or
    several: it answers each request line with the seconds the request took there."""

    REPLY = "@bench_gpt "  # marks the worker's answers among anything a library prints

    def __init__(self, sides: tuple, cfg, new_tokens: int = 0, prompt_len: int = 0, hf_compile: bool = False,
                 malloc: str = "keep"):
        import subprocess
        import tempfile
        from nety_jax.config.loader import save_config
        fd, self.config_path = tempfile.mkstemp(prefix="bench-gpt-", suffix=".yaml")
        os.close(fd)
        save_config(cfg, self.config_path)
        cmd = [sys.executable, os.path.abspath(__file__), "--serve", *sides, "--config", self.config_path,
               "--new-tokens", str(new_tokens), "--prompt-len", str(prompt_len), "--malloc", malloc] \
            + ["--hf-compile"] * hf_compile
        self.name, self.rss, self.last = "+".join(sides), None, {}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def _reply(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(self.REPLY):
                return json.loads(line[len(self.REPLY):])
            sys.stderr.write(line)
        raise SystemExit(f"bench_gpt: the {self.name} process exited (code {self.proc.wait()})")

    def request(self, side: str, op: str, batch: int, length: int = 0, mode: str = "") -> float:
        req = {"side": side, "op": op, "batch": batch, "length": length, "mode": mode}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        self.last = self._reply()  # also the request's CPU seconds and minor page faults there
        return self.last["seconds"]

    def close(self) -> float:
        """Its peak RSS in MB (once; later calls repeat it)."""
        if self.rss is None:
            self.proc.stdin.close()
            self.rss = self._reply()["peak_rss_mb"]
            self.proc.wait()
            os.unlink(self.config_path)
        return self.rss


class ProcessSide:
    """One framework's side held by a Worker (alone, or with the other framework's)."""

    def __init__(self, worker: Worker, side: str):
        self.worker, self.side = worker, side

    def request(self, op: str, batch: int, length: int = 0, mode: str = "") -> float:
        return self.worker.request(self.side, op, batch, length, mode)

    def close(self) -> dict:
        return {"peak_rss_mb": self.worker.close()}


def serve(argv) -> int:
    """The Worker's process: the sides named, a JSON request per stdin line, a reply per
    request on stdout; its peak RSS when stdin closes."""
    p = argparse.ArgumentParser(prog="bench_gpt.py --serve")
    p.add_argument("sides", nargs="+", choices=("ours", "hf"))
    p.add_argument("--config", required=True)
    p.add_argument("--new-tokens", type=int, default=0)
    p.add_argument("--prompt-len", type=int, default=0)
    p.add_argument("--hf-compile", action="store_true")
    p.add_argument("--malloc", choices=("keep", "default"), default="keep")
    args = p.parse_args(argv)
    from nety_jax.config import load_config
    from nety_jax.runtime import keep_host_memory
    keep_host_memory(args.malloc)  # before JAX or PyTorch runs anything
    cfg = load_config(args.config)
    sides = {name: LocalSide(name, cfg, args.new_tokens, args.prompt_len, args.hf_compile) for name in args.sides}
    for line in sys.stdin:
        req = json.loads(line)
        before = resource.getrusage(resource.RUSAGE_SELF)
        seconds = sides[req.pop("side")].request(**req)
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        faults = after.ru_minflt - before.ru_minflt
        print(Worker.REPLY + json.dumps({"seconds": seconds, "cpu_s": cpu, "faults": faults}), flush=True)
    print(Worker.REPLY + json.dumps({"peak_rss_mb": peak_rss_mb()}), flush=True)
    return 0


def make_sides(cfg, hf: bool, arrangement: str, hf_malloc: str, **kw) -> dict:
    """{"ours": side, "hf": side (when ``hf``)}: each in a process of its own ("processes"; ours
    with runtime.keep_host_memory, HF's with ``hf_malloc``), or both in one ("shared", ours's
    malloc setting, as this script ran them before 2026-12-05)."""
    names = ("ours", "hf") if hf else ("ours",)
    if arrangement == "shared":
        worker = Worker(names, cfg, **kw)
        return {name: ProcessSide(worker, name) for name in names}
    return {name: ProcessSide(Worker((name,), cfg, malloc="keep" if name == "ours" else hf_malloc, **kw), name)
            for name in names}


def close_sides(sides: dict) -> dict:
    """Each side's peak RSS in MB (its process's)."""
    return {name: side.close()["peak_rss_mb"] for name, side in sides.items()}


def bench_train(cfg, batch: int, length: int, repeats: int, hf: bool = True, hf_compile: bool = False,
                refs: "References | None" = None, arrangement: str = "processes", hf_malloc: str = "default",
                sides: "dict | None" = None) -> dict:
    """Seconds per AdamW step, ours and HF's, on the same (batch, length) token batch, each side
    warmed up (its first step: ours compiles) before the rounds. ``sides``: workers already
    started (``bench_rows`` under --tiny), left open; their peak RSS is then None here."""
    own = sides is None
    sides = make_sides(cfg, hf, arrangement, hf_malloc, hf_compile=hf_compile) if own else sides
    rss = None
    try:
        fns = {name: (lambda side=side: side.request("train", batch, length)) for name, side in sides.items()}
        compile_s = fns["ours"]()  # its first step: tracing and compilation
        seconds = alternate(with_references(fns, refs, ("matmul",)), repeats, warm=("ours",))
    finally:
        if own:
            rss = close_sides(sides)
    return {"batch": batch, "len": length, "flops": gpt_train_step_flops(cfg.model, batch, length),
            "compile_s": compile_s, "hf_compile": hf_compile, "arrangement": arrangement,
            **reference_values(seconds, refs), "seconds": seconds, "peak_rss_mb": rss}


def bench_generate(cfg, cases, new_tokens: int, prompt_len: int, repeats: int, hf: bool = True,
                   hf_compile: bool = False, refs: "References | None" = None, arrangement: str = "processes",
                   hf_malloc: str = "default", sides: "dict | None" = None) -> dict:
    """``cases``: (batch, mode) pairs; seconds per generate call of each, ours and HF's, with the
    reference of its target between the rounds (batch 1: the bandwidth; larger: the matmul peak).
    ``sides``: as bench_train's."""
    own = sides is None
    if own:
        sides = make_sides(cfg, hf, arrangement, hf_malloc, new_tokens=new_tokens, prompt_len=prompt_len,
                           hf_compile=hf_compile) if cases else {}
    rows, rss = {}, None
    try:
        for b, mode in cases:
            fns = {name: (lambda side=side, b=b, mode=mode: side.request("generate", b, mode=mode))
                   for name, side in sides.items()}
            rounds = max(repeats, B1_MIN_ROUNDS) if b == 1 else repeats
            seconds = alternate(with_references(fns, refs, ("copy",) if b == 1 else ("matmul",)), rounds)
            flops = gpt_generate_flops(cfg.model, b, prompt_len, new_tokens)
            rows[f"b{b}_{mode}"] = {"batch": b, "mode": mode, **reference_values(seconds, refs),
                                    "seconds": seconds, "flops": flops}
    finally:
        if own:
            rss = close_sides(sides)
    return {"new_tokens": new_tokens, "prompt_len": prompt_len, "hf_compile": hf_compile, "rows": rows,
            "weight_mb": gpt_decode_weight_bytes(cfg.model) / 1e6, "arrangement": arrangement, "peak_rss_mb": rss}


def bench_rows(cfg, args, refs: "References | None" = None) -> tuple[dict, dict]:
    """bench_train then bench_generate for ``args`` (``arguments``'s). Each starts its own worker
    per framework, except under --tiny (a smoke run, not a measurement: the workers' start-ups
    are most of its time), where one worker per framework serves every row; both results then
    carry its peak RSS."""
    hf, place = not args.skip_hf, dict(arrangement=args.arrangement, hf_malloc=args.hf_malloc)
    cases = [] if args.skip_gen else parse_cases(args.gen)
    sides = make_sides(cfg, hf, args.arrangement, args.hf_malloc, new_tokens=args.new_tokens,
                       prompt_len=args.prompt_len, hf_compile=args.hf_compile) if args.tiny else None
    try:
        train = bench_train(cfg, args.batch, args.len, args.repeats, hf, args.hf_compile, refs, **place, sides=sides)
        gen = bench_generate(cfg, cases, args.new_tokens, args.prompt_len, args.repeats, hf, args.hf_compile, refs,
                             **place, sides=sides)
    finally:
        rss = sides and close_sides(sides)
    if sides:
        train["peak_rss_mb"] = gen["peak_rss_mb"] = rss
    return train, gen


def summarize(train: dict, gen: dict, peak_gflops: float, copy_gbs: float) -> dict:
    """Throughputs, ratios (ours / HF: > 1 is faster), MFU and the fraction of the bandwidth bound,
    each against the reference measured between its own rounds where there is one (else the
    given ``peak_gflops`` / ``copy_gbs``)."""
    ratio = lambda s: s["hf"] / s["ours"] if s.get("hf") else None
    tr = train["seconds"]
    peak = train.get("peak_gflops", peak_gflops)
    out = {"gpt_train_ratio_vs_hf": ratio(tr), "gpt_train_mfu": train["flops"] / tr["ours"] / 1e9 / peak,
           "gpt_train_mfu_hf": tr.get("hf") and train["flops"] / tr["hf"] / 1e9 / peak,
           "gpt_train_tokens_per_s": train["batch"] * train["len"] / tr["ours"]}
    bound = copy_gbs * 1e3 / gen["weight_mb"]  # tokens/s at batch 1 if a step only read the weights
    for key, row in gen["rows"].items():
        s, tokens = row["seconds"], row["batch"] * gen["new_tokens"]
        row_bound = row.get("copy_gbs", copy_gbs) * 1e3 / gen["weight_mb"]
        row.update(tokens_per_s={k: tokens / v for k, v in s.items()}, bound_tokens_per_s=row_bound,
                   mfu=row["flops"] / s["ours"] / 1e9 / row.get("peak_gflops", peak_gflops),
                   fraction_of_bandwidth_bound=tokens / s["ours"] / (row_bound * row["batch"]))
        out[f"gpt_gen_{key}_ratio_vs_hf"] = ratio(s)
        out[f"gpt_gen_{key}_mfu"] = row["mfu"]
        out[f"gpt_gen_{key}_fraction_of_bandwidth_bound"] = row["fraction_of_bandwidth_bound"]
    return {**out, "gpt_bandwidth_bound_tokens_per_s": bound, "gpt_train": train, "gpt_generate": gen}


TARGETS = (  # issue #26: (key, at least / at most, value)
    ("gpt_train_ratio_vs_hf", ">=", 1.5),
    ("gpt_gen_b1_greedy_ratio_vs_hf", ">=", 2.0), ("gpt_gen_b1_topk_ratio_vs_hf", ">=", 2.0),
    ("gpt_gen_b1_greedy_fraction_of_bandwidth_bound", ">=", 0.8),
    ("gpt_gen_b1_topk_fraction_of_bandwidth_bound", ">=", 0.8),
    ("gpt_gen_b64_topk_ratio_vs_hf", ">=", 2.5), ("gpt_gen_b64_topk_mfu", ">=", 0.5),
    ("import_hf_s", "<=", 10.0),
)


def targets(results: dict) -> dict:
    """Each target of issue #26 with its value and whether it is met (None: not measured)."""
    out = {}
    for key, op, limit in TARGETS:
        value = results.get(key)
        met = None if value is None else (value >= limit if op == ">=" else value <= limit)
        out[key] = {"value": value, "target": f"{op} {limit}", "met": met}
    return out


def bench_import(tiny: bool) -> dict:
    """`nety-jax import-hf` of a GPT-2 124M-size directory made here (scripts/bench_import_hf.py):
    wall and CPU seconds of the whole command in a fresh process."""
    import shutil
    import tempfile
    import bench_import_hf
    root = tempfile.mkdtemp(prefix="bench-gpt-import-")
    try:
        bench_import_hf.make_gpt2_dir(os.path.join(root, "gpt2"))
        timing = bench_import_hf.time_command(os.path.join(root, "gpt2"), os.path.join(root, "run"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"import_hf_s": timing["command_s"], "import_hf_cpu_s": timing["command_cpu_s"]}


def machine_peak(dtype: str, tiny: bool) -> tuple[float, float]:
    """(matmul GFLOP/s through JAX, copy GB/s) once, the best of three: the references of MFU and
    the bandwidth bound where no reference was measured between a row's rounds."""
    refs = References(dtype, tiny)
    refs.matmul()
    best = min(timed(refs.matmul) for _ in range(3))
    return refs.gflops(best), refs.copy_gbs(min(refs.copy() for _ in range(3)))


def parse_cases(specs) -> list[tuple[int, str]]:
    cases = []
    for spec in specs:
        b, _, mode = spec.partition(":")
        if not b.isdigit() or int(b) < 1 or mode not in MODES:
            raise SystemExit(f"--gen {spec!r}: expected BATCH:MODE with MODE one of {', '.join(MODES)}")
        cases.append((int(b), mode))
    return cases


def run(args, peak_gflops: float = 0.0, copy_gbs: float = 0.0) -> dict:
    cfg = gpt_config(args.tiny, args.dtype)
    if not peak_gflops:
        peak_gflops, copy_gbs = machine_peak(args.dtype, args.tiny)
    train, gen = bench_rows(cfg, args, References(args.dtype, args.tiny))
    imported = {} if args.skip_import else bench_import(args.tiny)
    out = {"device": f"{jax.devices()[0].platform} {jax.devices()[0].device_kind}", "dtype": args.dtype,
           "load_average": os.getloadavg(), "peak_gflops": peak_gflops, "copy_gbs": copy_gbs, **imported,
           **summarize(train, gen, peak_gflops, copy_gbs)}
    return {**out, "targets": targets(out)}


def arguments(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny GPT sizes: a smoke run, not a measurement")
    p.add_argument("--batch", type=int, help="training batch (default 8; 4 with --tiny)")
    p.add_argument("--len", type=int, help="training length (default 256; 16 with --tiny)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="compute dtype")
    p.add_argument("--hf-compile", action="store_true", help="torch.compile HF's model (default: eager)")
    p.add_argument("--skip-hf", action="store_true", help="ours only")
    p.add_argument("--skip-gen", action="store_true", help="no generation rows (the train step only)")
    p.add_argument("--skip-import", action="store_true", help="no import-hf timing (it builds a 500 MB directory)")
    p.add_argument("--arrangement", choices=("processes", "shared"), default="processes",
                   help="each framework in a process of its own (default), or all in this one")
    p.add_argument("--hf-malloc", choices=("default", "keep"), default="default",
                   help="glibc malloc of HF's process: as PyTorch gets it (default) or as ours (keep)")
    p.add_argument("--gen", nargs="+", default=["1:greedy", "1:topk", "64:topk"], metavar="BATCH:MODE",
                   help="generation cases (MODE: greedy | topk, top-k 50)")
    p.add_argument("--new-tokens", type=int, help="tokens generated per row (default 64; 8 with --tiny)")
    p.add_argument("--prompt-len", type=int, default=8, help="prompt tokens per row")
    p.add_argument("--repeats", type=int, default=3, help="rounds per measurement (median)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    args.batch = args.batch or (4 if args.tiny else 8)
    args.len = args.len or (16 if args.tiny else 256)
    args.new_tokens = args.new_tokens or (8 if args.tiny else 64)
    args.skip_import = args.skip_import or args.tiny
    if args.tiny:  # batches above 4 become 4
        args.gen = [f"{min(int(b), 4) if b.isdigit() else b}:{m}" for b, _, m in
                    (spec.partition(":") for spec in args.gen)]
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        return serve(argv[1:])
    args = arguments(argv)
    from nety_jax.runtime import keep_host_memory
    keep_host_memory()  # ours runs as `nety-jax` runs it (before JAX starts; runtime.py)
    results = run(args)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
