"""The parts of scripts/bench.py, one process each: ``python scripts/bench_parts.py PART``.

Prints one JSON line (the part's results) last. See bench.py for what is measured. Several parts
(``bench_parts.py PART PART...``, bench.py --tiny) run in turn in one process and print one JSON
object of every part's results.
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.append(os.path.join(ROOT, "tests"))  # nety_torch_reference: NETY re-created in PyTorch

from nety_jax.runtime import keep_host_memory  # noqa: E402

# our parts run as the `nety-jax` command runs (set before JAX starts); see runtime.py
KEPT_HOST_MEMORY = len(sys.argv) > 1 and sys.argv[1] != "torch-train" and keep_host_memory()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench_util import peak_rss_mb, timed  # noqa: E402
from flops import decode_weight_bytes, generate_flops, train_step_flops  # noqa: E402

THREADS = os.cpu_count() or 1  # PyTorch's threads (1 under --tiny: main)
NEW_TOKENS, SRC_LEN = 64, 32
TINY_NEW_TOKENS = 8  # --tiny: NETY's loop reruns the whole model per token (most of the part's time)
# --tiny's dimensions (a smoke run of every code path, not a measurement): two layers of each kind
# keep the layer stacking, and a step's compilation, most of the smoke's time, grows with the layers
TINY_SIZES = ["model.d_model=32", "model.enc_hidden=16", "model.dec_heads=4", "model.enc_heads=2", "model.d_ff=64",
              "model.head_dims=[16, 8]", "model.max_len=128", "model.enc_layers=2", "model.dec_layers=2"]


def new_tokens(args) -> int:
    return TINY_NEW_TOKENS if args.tiny else NEW_TOKENS


def fresh_cache() -> str:
    """A new persistent compilation cache: the first compile is cold, a later one loads it."""
    from jax.experimental.compilation_cache import compilation_cache
    path = tempfile.mkdtemp(prefix="bench-jax-cache-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)  # each part's cache goes with the process
    compilation_cache.reset_cache()  # a process running several parts (bench.py --tiny) switches caches
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def config(args, name: str, extra=()):
    from nety_jax.config import load_config
    vocab = 64 if args.tiny else 8000
    sets = [f"model.vocab_size={vocab}", f"model.dtype={args.dtype}", "train.optimizer=adam",
            "train.learning_rate=1e-4", "train.schedule=constant", "train.warmup_steps=0",
            "train.clip_norm=0", "train.label_smoothing=0", *extra]
    if args.tiny:
        sets += TINY_SIZES
    return load_config(os.path.join(ROOT, "configs", name), sets)


# -- machine ---------------------------------------------------------------------------------------
def part_machine(args) -> dict:
    n = 512 if args.tiny else (8192 if jax.devices()[0].platform == "gpu" else 2048)
    a = jnp.ones((n, n), jnp.dtype(args.dtype))
    mm = jax.jit(lambda x: x @ x @ x @ x @ x)  # four products per call: less dispatch per FLOP
    jax.block_until_ready(mm(a))
    best = min(timed(lambda: jax.block_until_ready(mm(a))) for _ in range(max(args.repeats, 3)))
    size = (16 if args.tiny else 256) << 20
    src, dst = np.ones(size // 4, np.float32), np.empty(size // 4, np.float32)
    np.copyto(dst, src)
    copy = min(timed(lambda: np.copyto(dst, src)) for _ in range(max(args.repeats, 3)))
    device = jax.devices()[0]
    return {"device": f"{device.platform} {device.device_kind}", "cores": os.cpu_count(),
            "dtype": args.dtype, "peak_gflops": 4 * 2 * n ** 3 / best / 1e9,
            "copy_gbs": 2 * size / copy / 1e9}


# -- training --------------------------------------------------------------------------------------
def _train_batch(vocab: int, b: int, n: int) -> dict:
    rs = np.random.default_rng(0)
    src = rs.integers(4, vocab, (b, n)).astype(np.int32)
    tgt = rs.integers(4, vocab, (b, n + 1)).astype(np.int32)
    return {"src": src, "src_len": np.full(b, n, np.int32), "tgt_in": tgt[:, :-1], "targets": tgt[:, 1:]}


class JaxTrainer:
    def __init__(self, cfg, batch):
        from nety_jax.models import get_model
        from nety_jax.training.parallel import Runner
        from nety_jax.training.steps import create_train_state
        self.cfg, self.batch = cfg, batch
        self.model = get_model(cfg.model)
        self.state = create_train_state(self.model, cfg.train, jax.random.PRNGKey(0))
        self.runner = Runner(cfg, self.model, "none")

    def steps(self, k: int) -> None:
        for _ in range(k):
            self.state, metrics = self.runner.train(self.state, self.batch)
        jax.block_until_ready(metrics)

    def compile_times(self) -> tuple[float, float]:
        from nety_jax.training.parallel import Runner
        cold = timed(lambda: self.steps(1))
        jax.clear_caches()
        self.runner = Runner(self.cfg, self.model, "none")
        return cold, timed(lambda: self.steps(1))


class TorchTrainer:
    def __init__(self, cfg, batch):
        import torch
        from nety_torch_reference import HybridRNNTransformer
        torch.set_num_threads(THREADS)
        m = cfg.model
        self.torch, self.vocab = torch, m.vocab_size
        self.model = HybridRNNTransformer(m.vocab_size, m.d_model, m.enc_hidden, m.enc_layers, m.enc_heads,
                                          m.dec_heads, m.dec_layers, m.d_ff, m.dropout, m.max_len).train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.src = torch.from_numpy(batch["src"]).long()
        self.tgt_in = torch.from_numpy(batch["tgt_in"]).long()
        self.targets = torch.from_numpy(batch["targets"]).long()

    def steps(self, k: int) -> None:
        for _ in range(k):
            logits = self.model(self.src, self.tgt_in)
            loss = self.torch.nn.functional.cross_entropy(logits.reshape(-1, self.vocab),
                                                          self.targets.reshape(-1), ignore_index=0)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()


class TorchProcess:
    """NETY's PyTorch train step in a process of its own (``bench_parts.py torch-train``), timed in
    turns with ours. Its own process, so glibc's malloc runs as PyTorch NETY's train.py gets it
    (``host_malloc="default"``) while ours runs as ``nety-jax`` sets it
    (``runtime.keep_host_memory``); ``host_malloc="keep"`` gives PyTorch our setting too."""

    def __init__(self, args, host_malloc: str):
        import subprocess
        cmd = [sys.executable, os.path.abspath(__file__), "torch-train", "--host-malloc", host_malloc] \
            + (["--tiny"] if args.tiny else [])
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._reply()  # ready: built and one step taken

    def _reply(self) -> float:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the PyTorch step process exited (code {self.proc.wait()})")
        return float(line)

    def seconds_per_step(self, k: int) -> float:
        self.proc.stdin.write(f"{k}\n")
        self.proc.stdin.flush()
        return self._reply()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def part_torch_train(args) -> dict:
    """Serves timed PyTorch steps: reads a step count per line, answers seconds per step."""
    b, n = (4, 8) if args.tiny else (32, 32)
    parity = config(args, "nety_parity.yaml")
    trainer = TorchTrainer(parity, _train_batch(parity.model.vocab_size, b, n))
    trainer.steps(1)
    print(0.0, flush=True)
    for line in sys.stdin:
        k = int(line)
        print(timed(lambda: trainer.steps(k)) / k, flush=True)
    return {"peak_rss_mb": peak_rss_mb()}


def torch_processes(args) -> dict:
    """NETY's PyTorch step as NETY's train.py gets glibc's malloc ("torch") and with ours
    ("torch_same_malloc"), a process each; --tiny (a smoke run, not a measurement): one process
    serves both rows, as its start-up (imports, model) is most of what it costs."""
    if args.tiny:
        proc = TorchProcess(args, "default")
        return {"torch": proc, "torch_same_malloc": proc}
    return {"torch": TorchProcess(args, "default"), "torch_same_malloc": TorchProcess(args, "keep")}


def part_train(args) -> dict:
    b, n = (4, 8) if args.tiny else (32, 32)
    parity, base = config(args, "nety_parity.yaml"), config(args, "base.yaml")
    batch = _train_batch(parity.model.vocab_size, b, n)
    fresh_cache()
    jp = JaxTrainer(parity, batch)
    compile_s, compile_cached_s = jp.compile_times()
    jb = JaxTrainer(base, batch)
    jb.steps(1)
    jp.steps(1)
    rss = peak_rss_mb()
    refs = {} if args.tiny and args.skip_torch else torch_processes(args)
    times = {"parity": [], "base": [], **{key: [] for key in refs}}
    for _ in range(args.repeats):
        times["parity"].append(timed(lambda: jp.steps(2)) / 2)
        for key, proc in refs.items():
            times[key].append(proc.seconds_per_step(2))
        times["base"].append(timed(lambda: jb.steps(2)) / 2)
    for proc in set(refs.values()):
        proc.close()
    flops = {k: train_step_flops(c.model, b, n, n)["total"] for k, c in (("parity", parity), ("base", base))}
    out = {"vocab": parity.model.vocab_size, "batch": b, "len": n, "peak_rss_mb": rss,
           "gflop_parity": flops["parity"] / 1e9, "gflop_base": flops["base"] / 1e9, "torch": None,
           "torch_same_malloc": None, "host_malloc": "keep" if KEPT_HOST_MEMORY else "default"}
    for key, ts in times.items():
        s = statistics.median(ts)
        out[key] = {"s_per_step": s, "tokens_per_s": b * n / s,
                    "gflops": flops["base" if key == "base" else "parity"] / s / 1e9}
    out["parity"].update(compile_s=compile_s, compile_cached_s=compile_cached_s)
    return out


# -- generation ------------------------------------------------------------------------------------
class JaxGenerator:
    """Our generate, as ``nety-jax`` runs it; ``xla_only``: XLA's operations only (no CPU kernels
    of nety_jax.kernels: what an exported artifact runs), a program of its own."""

    new_tokens = NEW_TOKENS

    def __init__(self, cfg, xla_only: bool = False, variables=None, new_tokens: int = NEW_TOKENS):
        from nety_jax.decoding import generate_jit
        from nety_jax.models import get_model
        self.new_tokens = new_tokens
        self.model = get_model(cfg.model)
        self.variables = self.model.init(jax.random.PRNGKey(0)) if variables is None else variables
        self.fn = _portable_generate if xla_only else generate_jit

    def _args(self, b: int):
        from nety_jax.decoding import LoopSpec, SamplingParams
        src = jnp.asarray(np.random.default_rng(b).integers(4, self.model.cfg.vocab_size, (b, SRC_LEN)), jnp.int32)
        params = SamplingParams.create(b, temperature=0.8, top_k=50, top_p=0.9, seed=b)
        return (self.variables, src, jnp.full((b,), SRC_LEN, jnp.int32), params), \
            dict(model=self.model, spec=LoopSpec(max_new_tokens=self.new_tokens, ignore_eos=True))

    def call(self, b: int):
        args, static = self._args(b)
        return jax.block_until_ready(self.fn(*args, **static)["tokens"])

    def kernel_calls(self, b: int) -> list:
        """Which of our kernels the program for batch ``b`` calls (checks the two programs differ)."""
        from nety_jax import kernels
        args, static = self._args(b)
        text = self.fn.lower(*args, **static).as_text()
        return [t for t in kernels.TARGETS if t in text]


def _generate_xla_only(variables, tokens, lengths, params, *, model, spec):
    from nety_jax import kernels
    from nety_jax.decoding import generate
    with kernels.portable():  # decided at trace time, and this function is only ever traced so
        return generate(variables, tokens, lengths, params, model=model, spec=spec)


_portable_generate = jax.jit(_generate_xla_only, static_argnames=("model", "spec"))


def _hf_model(m):
    import torch
    from transformers import BartConfig, BartForConditionalGeneration
    cfg = BartConfig(vocab_size=m.vocab_size, d_model=m.d_model, encoder_layers=m.enc_layers,
                     decoder_layers=m.dec_layers, encoder_attention_heads=m.dec_heads,
                     decoder_attention_heads=m.dec_heads, encoder_ffn_dim=m.d_ff, decoder_ffn_dim=m.d_ff,
                     max_position_embeddings=m.max_len, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                     decoder_start_token_id=1, forced_eos_token_id=None)
    torch.set_num_threads(THREADS)
    return BartForConditionalGeneration(cfg).eval()


def _torch_refs(m, skip_hf: bool, new_tokens: int = NEW_TOKENS):
    import torch
    from nety_torch_reference import HybridRNNTransformer, nety_generate
    torch.set_num_threads(THREADS)
    nety = HybridRNNTransformer(m.vocab_size, m.d_model, m.enc_hidden, m.enc_layers, m.enc_heads,
                                m.dec_heads, m.dec_layers, m.d_ff, m.dropout, m.max_len).eval()
    src = {b: torch.randint(4, m.vocab_size, (b, SRC_LEN)) for b in (1, 64)}
    refs = {"nety": lambda b: nety_generate(nety, src[b], new_tokens, force_length=True)}
    if not skip_hf:
        hf = _hf_model(m)
        kw = dict(do_sample=True, top_k=50, top_p=0.9, temperature=0.8, max_new_tokens=new_tokens,
                  min_new_tokens=new_tokens)

        def hf_call(b):
            with torch.no_grad():
                hf.generate(src[b], **kw)
        refs["hf"] = hf_call
    return refs


def part_generate(args) -> dict:
    cfg = config(args, "nety_parity.yaml")
    batches, tokens = ((1, 4) if args.tiny else (1, 64)), new_tokens(args)
    fresh_cache()
    gen = JaxGenerator(cfg, new_tokens=tokens)
    compile_s = timed(lambda: gen.call(batches[0]))
    jax.clear_caches()
    compile_cached_s = timed(lambda: gen.call(batches[0]))
    for b in batches:
        gen.call(b)
    rss = peak_rss_mb()
    xla = JaxGenerator(cfg, xla_only=True, variables=gen.variables, new_tokens=tokens)
    kernel_calls = {"ours": gen.kernel_calls(batches[-1]), "xla_only": xla.kernel_calls(batches[-1])}
    if kernel_calls["xla_only"]:
        raise SystemExit(f"the XLA-only program calls our kernels: {kernel_calls['xla_only']}")
    refs = _torch_refs(cfg.model, args.skip_hf or args.tiny, tokens)
    for b in batches:  # warm-up
        refs.get("hf", lambda b: None)(b)
        xla.call(b)
    refs["nety"](1)
    times = {(name, b): [] for b in batches for name in ("jax", "xla", "hf", "nety")}
    for _ in range(args.repeats):
        for b in batches:
            times[("jax", b)].append(timed(lambda: gen.call(b)))
            times[("xla", b)].append(timed(lambda: xla.call(b)))
            if "hf" in refs:
                times[("hf", b)].append(timed(lambda: refs["hf"](b)))
            if b == 1:
                times[("nety", b)].append(timed(lambda: refs["nety"](b)))
    rows = {}
    for i, b in enumerate(batches):
        key = "1" if i == 0 else "64"
        rows[key] = {"batch": b, "flops": generate_flops(cfg.model, b, SRC_LEN, tokens),
                     "weight_mb": decode_weight_bytes(cfg.model) / 1e6}
        for name in ("jax", "xla", "hf", "nety"):
            if times[(name, b)]:
                rows[key][name] = b * tokens / statistics.median(times[(name, b)])
        rows[key]["seconds"] = statistics.median(times[("jax", b)])
        rows[key]["seconds_xla"] = statistics.median(times[("xla", b)])
    return {"new_tokens": tokens, "batches": rows, "compile_s": compile_s, "kernel_calls": kernel_calls,
            "compile_cached_s": compile_cached_s, "peak_rss_mb": rss}


# -- recompilation ---------------------------------------------------------------------------------
def part_recompiles(args) -> dict:
    """Trains over the bucketed embedded corpus: one epoch compiles every shape it meets, then
    further epochs must compile nothing."""
    from nety_jax.config import load_config
    from nety_jax.data import BatchIterator
    from nety_jax.models import get_model
    from nety_jax.training.parallel import Runner
    from nety_jax.training.setup import build_tokenizer
    from nety_jax.training.steps import create_train_state
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, secs, **kw: compiles.append(event) if event == "/jax/core/compile/backend_compile_duration" else None)
    # --tiny: one layer of each kind (whether a shape compiles again does not depend on the depth)
    cfg = load_config(os.path.join(ROOT, "configs", "tiny.yaml"), ["model.enc_layers=1", "model.dec_layers=1",
                                                                   "model.head_dims=[16]"]) if args.tiny else \
        load_config(os.path.join(ROOT, "configs", "demo.yaml"))
    task = get_model(cfg.model).task
    corpus = task.read(cfg, task.default_paths(), False)
    tok = build_tokenizer(cfg, corpus.texts)
    cfg = cfg.replace_model(vocab_size=tok.vocab_size)
    data = task.encode(cfg, tok, corpus, "corpus")
    model = get_model(cfg.model)
    runner = Runner(cfg, model, "none")
    state = create_train_state(model, cfg.train, jax.random.PRNGKey(0))
    it = BatchIterator(data.train, cfg.train.batch_size, cfg.train.seed)
    shapes = set()
    for _ in range(it.batches_per_epoch):  # warm-up: the first epoch
        batch = next(it)
        shapes.add(tuple(v.shape for v in batch.values()))
        state, m = runner.train(state, batch)
    jax.block_until_ready(m)
    before, steps = len(compiles), (1 if args.tiny else 2) * it.batches_per_epoch
    new_shapes = set()
    for _ in range(steps):
        batch = next(it)
        key = tuple(v.shape for v in batch.values())
        if key not in shapes:
            new_shapes.add(key)
        state, m = runner.train(state, batch)
    jax.block_until_ready(m)
    return {"compilations": len(compiles) - before, "shapes": len(shapes), "new_shapes": len(new_shapes),
            "steps": steps, "warm_up_compilations": before}


# -- the GPT against HuggingFace GPT-2 -------------------------------------------------------------
def part_gpt(args) -> dict:
    """scripts/bench_gpt.py's measurements (MFU and bounds are redone by bench.py against the
    machine part's peak); at most 3 rounds: a 124M step takes seconds on a small CPU."""
    import bench_gpt
    argv = ["--repeats", str(min(args.repeats, 3)), "--dtype", args.dtype, "--gen", "1:greedy", "1:topk",
            "64:topk"] + ["--tiny"] * args.tiny + ["--skip-hf"] * args.skip_hf + ["--hf-compile"] * args.hf_compile
    gargs = bench_gpt.arguments(argv)
    train, gen = bench_gpt.bench_rows(bench_gpt.gpt_config(gargs.tiny, gargs.dtype), gargs)
    # each framework ran in a process of its own: the largest of them
    rss = [peak_rss_mb(), *train["peak_rss_mb"].values(), *gen["peak_rss_mb"].values()]
    return {"train": train, "generate": gen, "peak_rss_mb": max(rss)}


def main() -> int:
    global THREADS
    p = argparse.ArgumentParser()
    p.add_argument("part", nargs="+", choices=("machine", "train", "torch-train", "generate", "recompiles", "gpt"),
                   help="several: run in turn in this process, one JSON object {part: results}")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--skip-torch", action="store_true")
    p.add_argument("--hf-compile", action="store_true", help="gpt: torch.compile HF's GPT-2")
    p.add_argument("--host-malloc", choices=("keep", "default"), help="torch-train: glibc's malloc setting")
    args = p.parse_args()
    if args.tiny:  # a smoke run, on machines busy with other work: PyTorch's threads wait for each
        THREADS = 1  # other at every operation, which a descheduled thread makes cost milliseconds
    if args.part == ["torch-train"]:
        keep_host_memory(args.host_malloc)
    results = {part: globals()[f"part_{part.replace('-', '_')}"](args) for part in args.part}
    print(json.dumps(results[args.part[0]] if len(args.part) == 1 else results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
