"""Speed on one accelerator, in ONE process: nety-jax against PyTorch on the same device, same run.

    python scripts/bench_gpu.py --out DIR [--tiny] [--budget SECONDS] [--repeats N] [--parts a,b] [--tag T]

Run by scripts/gpu_check.sh (which sets the platform, the compilation cache and the wheels); on
its own it measures whatever device JAX and PyTorch see ("cuda" when PyTorch has one). Writes
DIR/bench-results.json and DIR/bench-gpu.md (the tables for docs/PERFORMANCE.md). Parts:

- machine: the device, its bfloat16 peak by its datasheet (dense, no sparsity; None for a card
  not in ``DATASHEET_BF16``), and a bfloat16 and a float32 matmul peak measured through JAX now;
- hybrid training: the jitted train step of the parity and the base config, float32 and
  bfloat16 (``model.dtype``: the mixed-precision switch), against NETY's PyTorch step on the
  same device (bfloat16: ``torch.autocast``), alternating round by round; tokens/s and MFU
  (scripts/flops.py's analytic count) against both peaks; the bfloat16 steps again with the GPU
  fast paths off (``NETY_JAX_GPU_FAST_PATHS=off``): each fast path's effect;
- hybrid generation: 64 sampled tokens (top-k 50, top-p 0.9, temperature 0.8) at batch 1, 64
  and 256, against HuggingFace BART with NETY's decoder dimensions (``generate``) on the same
  device; tokens/s and MFU; ours again with the fast paths off;
- GPT-2 124M (scripts/bench_gpt.py's classes, run first): the bfloat16 train step (16 x 1024, no
  dropout, as llm.c measures it) against HF's GPT2LMHeadModel eager and under torch.compile (GPU
  only: on a CPU it needs minutes of C++ builds), and top-k generation at batch 1, 64 and 256
  against HF ``generate``.

- profile: one GPT-2 train step, one hybrid train step and one generation call of each under
  ``jax.profiler`` (a Perfetto trace, read here): each device line's busy time, its share by
  kind of kernel (matmul, attention, rnn, fusion, copy, reduce) and its heaviest kernels.

``--parts`` picks and orders parts (the machine always runs); ``--tag`` names a second run's
files (gpu_check.sh runs GPT-2's step again under other XLA flags, which hold for a process).
Medians over ``--repeats`` rounds after a warm-up; device work is synchronized before each clock
read. A part that would start after ``--budget`` seconds is skipped and says so in the results.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # PyTorch shares the device
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.append(os.path.join(ROOT, "tests"))  # nety_torch_reference: NETY re-created in PyTorch

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import bench_util  # noqa: E402
from flops import generate_flops, train_step_flops  # noqa: E402

# dense bfloat16 FLOP/s by the vendor's datasheet (SXM parts; leads, not readings)
DATASHEET_BF16 = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362.05e12, "L4": 121e12,
                  "A10G": 70e12, "B200": 2250e12}
SRC_LEN = 32
TOKENS = {"gen": 64}  # tokens generated per row (8 with --tiny)
FAST_ENV = "NETY_JAX_GPU_FAST_PATHS"
# $NETY_JAX_GPU_FAST_PATHS values timed against the default (all on), and their rows' labels
FAST_LABELS = {"off": "ours, fast paths off", "attention": "ours, cuDNN attention only",
               "lstm": "ours, cuDNN LSTM only"}


def sync(torch=None):
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, torch=None) -> float:
    return bench_util.timed(fn, lambda: sync(torch))


class Budget:
    """Parts start only while time is left; skipped ones are named in the results."""

    def __init__(self, seconds: float):
        self.end, self.skipped = time.monotonic() + seconds, []

    def allows(self, name: str, need: float = 0.0) -> bool:
        if time.monotonic() + need < self.end:
            return True
        self.skipped.append(name)
        print(f"[bench_gpu] {name}: skipped (time budget spent)", flush=True)
        return False


def torch_device():
    try:
        import torch
    except ImportError:
        return None, None
    return torch, ("cuda" if torch.cuda.is_available() else "cpu")


# -- machine ---------------------------------------------------------------------------------------
def matmul_peak(dtype, n: int, repeats: int) -> float:
    """FLOP/s of a chain of four n x n products through JAX on random data (zeros run faster)."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype) / np.sqrt(n)
    mm = jax.jit(lambda x: x @ x @ x @ x @ x)
    jax.block_until_ready(mm(a))
    best = min(timed(lambda: jax.block_until_ready(mm(a))) for _ in range(max(repeats, 3)))
    return 4 * 2 * n ** 3 / best


def single_matmul_peak(n: int, repeats: int) -> float:
    """FLOP/s of ONE n x n bfloat16 product accumulated in float32 (``preferred_element_type``):
    beside the chain, it tells a slow product from a slow chain."""
    a = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.bfloat16)
    mm = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
    jax.block_until_ready(mm(a, a))
    best = min(timed(lambda: jax.block_until_ready(mm(a, a))) for _ in range(max(repeats, 3)))
    return 2 * n ** 3 / best


def part_machine(args) -> dict:
    device = jax.devices()[0]
    n = 512 if args.tiny else 8192
    kind = device.device_kind
    datasheet = next((v for k, v in DATASHEET_BF16.items() if k.lower() in kind.lower()), None)
    if device.platform == "cpu":
        datasheet = None
    out = {"platform": device.platform, "device": kind, "devices": jax.device_count(),
           "datasheet_bf16_flops": datasheet, "matmul_bf16_flops": matmul_peak(jnp.bfloat16, n, args.repeats),
           "matmul_f32_flops": matmul_peak(jnp.float32, n, args.repeats), "matmul_n": n,
           "matmul_bf16_single_flops": single_matmul_peak(n, args.repeats),
           "jax": jax.__version__, "fast_paths": os.environ.get(FAST_ENV, "on"),
           "xla_flags": os.environ.get("XLA_FLAGS", "")}
    # the same products through PyTorch (cuBLAS), since JAX's may run slower than the card can
    # (docs/PERFORMANCE.md, "On a GPU"): the "measured" MFU is taken against the faster
    out["matmul_bf16_flops_torch"] = torch_matmul_peak(n, args.repeats)
    out["matmul_peak_flops"] = max(out["matmul_bf16_flops"], out["matmul_bf16_flops_torch"] or 0.0)
    return out


def torch_matmul_peak(n: int, repeats: int):
    torch, device = torch_device()
    if torch is None:
        return None
    g = torch.Generator(device=device).manual_seed(0)
    a = (torch.randn(n, n, generator=g, device=device) / n ** 0.5).to(torch.bfloat16)

    def chain():
        x = a
        for _ in range(4):
            x = x @ a
        return x
    chain()
    best = min(timed(chain, torch) for _ in range(max(repeats, 3)))
    return 4 * 2 * n ** 3 / best


# -- hybrid training -------------------------------------------------------------------------------
def hybrid_config(args, name: str, dtype: str):
    from nety_jax.config import load_config
    sets = [f"model.vocab_size={64 if args.tiny else 8000}", f"model.dtype={dtype}", "train.optimizer=adam",
            "train.learning_rate=1e-4", "train.schedule=constant", "train.warmup_steps=0", "train.clip_norm=0",
            "train.label_smoothing=0", f"train.batch_size={args.batch}"]
    if args.tiny:
        # bench.py --tiny's sizes (bench_parts.TINY_SIZES): two layers of each kind
        sets += ["model.d_model=32", "model.enc_hidden=16", "model.dec_heads=4", "model.enc_heads=2",
                 "model.d_ff=64", "model.head_dims=[16, 8]", "model.max_len=128", "model.enc_layers=2",
                 "model.dec_layers=2"]
    return load_config(os.path.join(ROOT, "configs", name), sets)


def train_batch(vocab: int, b: int, n: int) -> dict:
    rs = np.random.default_rng(0)
    tgt = rs.integers(4, vocab, (b, n + 1)).astype(np.int32)
    return {"src": rs.integers(4, vocab, (b, n)).astype(np.int32), "src_len": np.full(b, n, np.int32),
            "tgt_in": tgt[:, :-1], "targets": tgt[:, 1:]}


class JaxTrainer:
    """Our jitted train step; the fast paths as ``fast`` says (read when it is traced, here)."""

    def __init__(self, cfg, batch, fast: str = "on"):
        from nety_jax.models import get_model
        from nety_jax.training.parallel import Runner
        from nety_jax.training.steps import create_train_state
        os.environ[FAST_ENV] = fast
        self.model = get_model(cfg.model)
        self.state = create_train_state(self.model, cfg.train, jax.random.PRNGKey(0))
        self.runner = Runner(cfg, self.model, "none")
        self.batch = {k: jax.device_put(v) for k, v in batch.items()}
        self.compile_s = timed(lambda: self.steps(1))
        os.environ[FAST_ENV] = "on"

    def steps(self, k: int) -> None:
        for _ in range(k):
            self.state, metrics = self.runner.train(self.state, self.batch)
        jax.block_until_ready(metrics)


class TorchTrainer:
    """NETY's PyTorch step (the re-creation in tests/nety_torch_reference.py) on ``device``;
    bfloat16 through ``torch.autocast`` (float32 weights and optimizer, as ours)."""

    def __init__(self, cfg, batch, torch, device: str):
        from nety_torch_reference import HybridRNNTransformer
        m = cfg.model
        self.torch, self.vocab, self.device = torch, m.vocab_size, device
        self.bf16 = m.dtype == "bfloat16"
        self.model = HybridRNNTransformer(m.vocab_size, m.d_model, m.enc_hidden, m.enc_layers, m.enc_heads,
                                          m.dec_heads, m.dec_layers, m.d_ff, m.dropout, m.max_len).train().to(device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.src, self.tgt_in, self.targets = (torch.from_numpy(batch[k]).long().to(device)
                                               for k in ("src", "tgt_in", "targets"))
        self.steps(1)

    def steps(self, k: int) -> None:
        torch = self.torch
        for _ in range(k):
            with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.bf16):
                logits = self.model(self.src, self.tgt_in)
                loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, self.vocab),
                                                         self.targets.reshape(-1), ignore_index=0)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
        sync(torch)


def _rate(seconds: float, flops: float, tokens: int, machine: dict) -> dict:
    peak = machine["datasheet_bf16_flops"]
    return {"s_per_step": seconds, "tokens_per_s": tokens / seconds, "tflops": flops / seconds / 1e12,
            "mfu_datasheet": flops / seconds / peak if peak else None,
            "mfu_measured": flops / seconds / machine["matmul_peak_flops"]}


def train_row(args, machine, name: str, dtype: str, b: int, n: int) -> dict:
    """One config and dtype: ours (fast paths on, and off on a GPU in bfloat16) and NETY's
    PyTorch step (parity config: NETY's own model) timed in turns."""
    torch, device = torch_device()
    cfg = hybrid_config(args, name, dtype)
    batch = train_batch(cfg.model.vocab_size, b, n)
    contenders = {"ours": JaxTrainer(cfg, batch)}
    if dtype == "bfloat16" and machine["platform"] == "gpu":
        # both paths together can cost (docs/PERFORMANCE.md, "On a GPU"): each alone says which
        variants = ("off", "attention", "lstm") if name == "nety_parity.yaml" else ("off",)
        for fast in variants:
            contenders[FAST_LABELS[fast]] = JaxTrainer(cfg, batch, fast=fast)
    if torch is not None and name == "nety_parity.yaml":
        contenders["NETY PyTorch"] = TorchTrainer(cfg, batch, torch, device)
    times = {k: [] for k in contenders}
    for _ in range(args.repeats):
        for key, trainer in contenders.items():
            times[key].append(timed(lambda: trainer.steps(2), torch) / 2)
    flops = train_step_flops(cfg.model, b, n, n)["total"]
    row = {"config": name, "dtype": dtype, "batch": b, "len": n, "gflop_per_step": flops / 1e9,
           "compile_s": contenders["ours"].compile_s}
    for key, ts in times.items():
        row[key] = _rate(statistics.median(ts), flops, b * n, machine)
    if "NETY PyTorch" in row:
        row["ratio_vs_torch"] = row["NETY PyTorch"]["s_per_step"] / row["ours"]["s_per_step"]
    for fast, label in FAST_LABELS.items():  # "off" keeps the name the first run's results use
        if label in row:
            key = "fast_paths_speedup" if fast == "off" else f"speedup_vs_{fast}"
            row[key] = row[label]["s_per_step"] / row["ours"]["s_per_step"]
    return row


def part_train(args, machine, budget) -> dict:
    b, n = (4, 8) if args.tiny else (args.batch, 32)
    # tiny: each config and each dtype once (a smoke run of every code path)
    # the targets' rows (NETY's own model against its PyTorch step) first, should time run out
    plan = [("nety_parity.yaml", "float32"), ("base.yaml", "bfloat16")] if args.tiny else \
        [("nety_parity.yaml", "bfloat16"), ("nety_parity.yaml", "float32"), ("base.yaml", "bfloat16"),
         ("base.yaml", "float32")]
    rows = []
    for name, dtype in plan:
        label = f"{name.split('.')[0]} {dtype}"
        if budget.allows(f"train {label}", 20):
            rows.append(train_row(args, machine, name, dtype, b, n))
            print(f"[bench_gpu] train {label}: {rows[-1]['ours']['s_per_step'] * 1e3:.2f} ms/step", flush=True)
    return {"rows": rows}


# -- hybrid generation -----------------------------------------------------------------------------
class JaxGenerator:
    def __init__(self, cfg, variables, fast: str = "on"):
        from nety_jax.decoding import generate
        from nety_jax.models import get_model
        self.model, self.variables, self.fast = get_model(cfg.model), variables, fast
        # a jit of its own per setting: the fast paths are read when it is traced
        self.fn = jax.jit(lambda *a, model, spec: generate(*a, model=model, spec=spec),
                          static_argnames=("model", "spec"))

    def call(self, src):
        from nety_jax.decoding import LoopSpec, SamplingParams
        b = src.shape[0]
        params = SamplingParams.create(b, temperature=0.8, top_k=50, top_p=0.9, seed=b)
        os.environ[FAST_ENV] = self.fast
        try:
            out = self.fn(self.variables, src, jnp.full((b,), src.shape[1], jnp.int32), params, model=self.model,
                          spec=LoopSpec(max_new_tokens=TOKENS["gen"], ignore_eos=True))
            return jax.block_until_ready(out["tokens"])
        finally:
            os.environ[FAST_ENV] = "on"


def _hf_bart(m, torch, device):
    from transformers import BartConfig, BartForConditionalGeneration
    cfg = BartConfig(vocab_size=m.vocab_size, d_model=m.d_model, encoder_layers=m.enc_layers,
                     decoder_layers=m.dec_layers, encoder_attention_heads=m.dec_heads,
                     decoder_attention_heads=m.dec_heads, encoder_ffn_dim=m.d_ff, decoder_ffn_dim=m.d_ff,
                     max_position_embeddings=m.max_len, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                     decoder_start_token_id=1, forced_eos_token_id=None)
    model = BartForConditionalGeneration(cfg).eval().to(device)
    kw = dict(do_sample=True, top_k=50, top_p=0.9, temperature=0.8, max_new_tokens=TOKENS["gen"],
              min_new_tokens=TOKENS["gen"])

    def call(src):
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=m.dtype == "bfloat16"):
            model.generate(src, **kw)
    return call


def part_generate(args, machine, budget) -> dict:
    torch, device = torch_device()
    batches = (1, 4) if args.tiny else (1, 64, 256)
    rows = []
    for dtype in ("bfloat16",) if args.tiny else ("bfloat16", "float32"):
        if not budget.allows(f"generate {dtype}", 30):
            continue
        cfg = hybrid_config(args, "nety_parity.yaml", dtype)
        from nety_jax.models import get_model
        variables = get_model(cfg.model).init(jax.random.PRNGKey(0))
        gens = {"ours": JaxGenerator(cfg, variables)}
        if machine["platform"] == "gpu" and dtype == "bfloat16":
            gens["ours, fast paths off"] = JaxGenerator(cfg, variables, fast="off")
        hf = None
        if torch is not None and not args.skip_hf:
            try:
                hf = _hf_bart(cfg.model, torch, device)
            except ImportError:
                hf = None
        for b in batches:
            src_np = np.random.default_rng(b).integers(4, cfg.model.vocab_size, (b, SRC_LEN)).astype(np.int32)
            src = jnp.asarray(src_np)
            calls = {k: (lambda g=g: g.call(src)) for k, g in gens.items()}
            if hf is not None:
                src_t = torch.from_numpy(src_np).long().to(device)
                calls["HF BART generate"] = lambda: hf(src_t)
            compile_s = timed(calls["ours"])
            for key, fn in calls.items():
                if key != "ours":
                    fn()  # warm-up
            times = {k: [] for k in calls}
            for _ in range(args.repeats):
                for key, fn in calls.items():
                    times[key].append(timed(fn, torch))
            flops = generate_flops(cfg.model, b, SRC_LEN, TOKENS["gen"])
            row = {"dtype": dtype, "batch": b, "new_tokens": TOKENS["gen"], "compile_s": compile_s}
            for key, ts in times.items():
                row[key] = _rate(statistics.median(ts), flops, b * TOKENS["gen"], machine)
            if "HF BART generate" in row:
                row["ratio_vs_hf"] = row["HF BART generate"]["s_per_step"] / row["ours"]["s_per_step"]
            if "ours, fast paths off" in row:
                row["fast_paths_speedup"] = row["ours, fast paths off"]["s_per_step"] / row["ours"]["s_per_step"]
            rows.append(row)
            print(f"[bench_gpu] generate {dtype} batch {b}: {row['ours']['tokens_per_s']:,.0f} tok/s", flush=True)
    return {"rows": rows}


# -- GPT-2 124M (scripts/bench_gpt.py) -------------------------------------------------------------
def gpt_train(args, machine, bench_gpt, cfg, b: int, n: int) -> dict:
    """Our bfloat16 AdamW step against HF GPT2LMHeadModel eager and torch.compile-d, in turns."""
    tokens = bench_gpt.token_batch(cfg.model.vocab_size, b, n)
    ours = bench_gpt.OurTrainer(cfg, tokens)
    compile_s = timed(lambda: ours.steps(1))
    fns = {"ours": lambda: ours.steps(1)}
    if not args.skip_hf:
        eager = bench_gpt.HFTrainer(cfg, tokens)
        fns["HF eager"] = lambda: eager.steps(1)
        if not args.tiny:  # torch.compile on a CPU needs minutes of C++ builds: a GPU-only row
            compiled = bench_gpt.HFTrainer(cfg, tokens, compile=True)
            fns["HF torch.compile"] = lambda: compiled.steps(1)
    seconds = bench_gpt.alternate(fns, args.repeats)
    flops = bench_gpt.gpt_train_step_flops(cfg.model, b, n)
    row = {"batch": b, "len": n, "compile_s": compile_s, "gflop_per_step": flops / 1e9,
           **{k: _rate(v, flops, b * n, machine) for k, v in seconds.items()}}
    for ref in ("HF eager", "HF torch.compile"):
        if ref in seconds:
            row[f"ratio_vs_{ref.split()[-1]}"] = seconds[ref] / seconds["ours"]
    return row


def gpt_generate(args, machine, bench_gpt, cfg, batches) -> list:
    """Top-k 50 sampling of TOKENS["gen"] tokens after an 8-token prompt, ours against HF generate."""
    ours = bench_gpt.OurGenerator(cfg, TOKENS["gen"], 8)
    theirs = None if args.skip_hf else bench_gpt.HFGenerator(cfg, TOKENS["gen"], 8)
    rows = []
    for b in batches:
        fns = {"ours": lambda b=b: ours.call(b, "topk")}
        if theirs is not None:
            fns["HF generate"] = lambda b=b: theirs.call(b, "topk")
        seconds = bench_gpt.alternate(fns, args.repeats)
        flops = bench_gpt.gpt_generate_flops(cfg.model, b, 8, TOKENS["gen"])
        row = {"batch": b, **{k: _rate(v, flops, b * TOKENS["gen"], machine) for k, v in seconds.items()}}
        if "HF generate" in seconds:
            row["ratio_vs_hf"] = seconds["HF generate"] / seconds["ours"]
        rows.append(row)
    return rows


def part_gpt(args, machine, budget) -> dict:
    """GPT-2 124M in bfloat16 without dropout (as llm.c measures it), both sides."""
    import bench_gpt
    if args.tiny:  # HF's models take bench_gpt's PyTorch threads: as bench.py --tiny, one (a smoke run)
        bench_gpt.THREADS = 1
    cfg = bench_gpt.gpt_config(args.tiny, "bfloat16", ["model.dropout=0.0", "model.attention_dropout=0.0"])
    out = {"config": "gpt2_124m.yaml" + (" (tiny sizes)" if args.tiny else ""), "dtype": "bfloat16"}
    if "train" in args.gpt_parts and budget.allows("gpt train", 60):
        b, n = (4, 16) if args.tiny else (16, 1024)
        out["train"] = gpt_train(args, machine, bench_gpt, cfg, b, n)
        print(f"[bench_gpu] gpt train: {out['train']['ours']['s_per_step'] * 1e3:.1f} ms/step", flush=True)
    if "generate" in args.gpt_parts and budget.allows("gpt generate", 30):
        out["generate"] = gpt_generate(args, machine, bench_gpt, cfg, (1, 4) if args.tiny else (1, 64, 256))
    return out


# -- where the time goes: device traces -------------------------------------------------------------
# kernel name fragments -> a category (first match wins: cuDNN's RNN kernels before its attention)
CATEGORIES = (("rnn", ("rnn", "lstm")), ("attention", ("fmha", "flash", "sdpa", "attention")),
              ("matmul", ("gemm", "cublas", "cutlass", "matmul", "xmma", "dot")),
              ("copy", ("copy", "memcpy", "memset", "transpose", "dynamic-update-slice", "dynamic_update_slice")),
              ("reduce", ("reduce",)), ("fusion", ("fusion", "loop_", "input_", "triton")))


def category(name: str) -> str:
    low = name.lower()
    return next((c for c, keys in CATEGORIES if any(k in low for k in keys)), "other")


def read_trace(folder: str) -> list:
    """(process name, thread name, event name, microseconds) of every complete event of the
    Perfetto trace that ``jax.profiler.trace(create_perfetto_trace=True)`` wrote under ``folder``."""
    import glob
    import gzip
    paths = glob.glob(os.path.join(folder, "**", "perfetto_trace.json.gz"), recursive=True)
    if not paths:
        raise RuntimeError(f"no perfetto_trace.json.gz under {folder}")
    with gzip.open(paths[0], "rt", encoding="utf-8") as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    procs = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
               if e.get("ph") == "M" and e.get("name") == "thread_name"}
    return [(procs.get(e["pid"], str(e["pid"])), threads.get((e["pid"], e.get("tid")), str(e.get("tid"))),
             e.get("name", ""), float(e.get("dur", 0.0))) for e in events if e.get("ph") == "X"]


def summarize_trace(events: list, wall_s: float, top: int = 8) -> dict:
    """The device's lines (the host's when there is no device: a CPU smoke run), each with its
    busy time, its categories' shares and its heaviest event names."""
    device = [e for e in events if "device:" in e[0].lower() or "gpu" in e[0].lower()]
    chosen = device or [e for e in events if not e[2].startswith("$")]
    lines = {}
    for proc, thread, name, dur in chosen:
        line = lines.setdefault(f"{proc} {thread}", {"busy_us": 0.0, "events": 0, "names": {}, "categories": {}})
        line["busy_us"] += dur
        line["events"] += 1
        line["names"][name[:80]] = line["names"].get(name[:80], 0.0) + dur
        cat = category(name)
        line["categories"][cat] = line["categories"].get(cat, 0.0) + dur
    out = {"wall_ms": wall_s * 1e3, "on_device": bool(device), "lines": {}}
    for key, line in sorted(lines.items(), key=lambda kv: -kv[1]["busy_us"])[:4]:
        busy = line["busy_us"] or 1.0
        out["lines"][key] = {
            "busy_ms": line["busy_us"] / 1e3, "events": line["events"],
            "categories": {c: v / busy for c, v in sorted(line["categories"].items(), key=lambda kv: -kv[1])},
            "top": [[n, v / 1e3, v / busy] for n, v in sorted(line["names"].items(), key=lambda kv: -kv[1])[:top]]}
    return out


def device_profile(fn) -> dict:
    """``fn`` (already compiled) once under the profiler: where its device time goes."""
    import shutil
    import tempfile
    folder = tempfile.mkdtemp(prefix="nety-trace-")
    try:
        with jax.profiler.trace(folder, create_perfetto_trace=True):
            start = time.perf_counter()
            fn()
            wall = time.perf_counter() - start
        return summarize_trace(read_trace(folder), wall)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def part_profile(args, machine, budget) -> dict:
    """One GPT-2 train step, one hybrid train step (bfloat16, parity config) and one hybrid and
    one GPT generation call (batch 64; 4 with --tiny) under the profiler."""
    import bench_gpt
    out = {}
    b = 4 if args.tiny else 64
    if budget.allows("profile gpt train", 30):
        cfg = bench_gpt.gpt_config(args.tiny, "bfloat16", ["model.dropout=0.0", "model.attention_dropout=0.0"])
        bt, n = (4, 16) if args.tiny else (16, 1024)
        trainer = bench_gpt.OurTrainer(cfg, bench_gpt.token_batch(cfg.model.vocab_size, bt, n))
        trainer.steps(2)
        out["gpt train step"] = device_profile(lambda: trainer.steps(1))
        gen = bench_gpt.OurGenerator(cfg, TOKENS["gen"], 8)
        gen.call(b, "topk")
        out[f"gpt generate, batch {b}"] = device_profile(lambda: gen.call(b, "topk"))
    if budget.allows("profile hybrid", 30):
        cfg = hybrid_config(args, "nety_parity.yaml", "bfloat16")
        bt, n = (4, 8) if args.tiny else (args.batch, 32)
        trainer = JaxTrainer(cfg, train_batch(cfg.model.vocab_size, bt, n))
        out["hybrid train step (parity, bfloat16)"] = device_profile(lambda: trainer.steps(1))
        from nety_jax.models import get_model
        gen = JaxGenerator(cfg, get_model(cfg.model).init(jax.random.PRNGKey(0)))
        src = jnp.asarray(np.random.default_rng(b).integers(4, cfg.model.vocab_size, (b, SRC_LEN)).astype(np.int32))
        gen.call(src)
        out[f"hybrid generate, batch {b} (bfloat16)"] = device_profile(lambda: gen.call(src))
    return out


def profile_tables(p: dict) -> list:
    lines = []
    for label, prof in p.items():
        if not isinstance(prof, dict) or "lines" not in prof:
            continue
        lines += ["", f"Profile: {label}, {prof['wall_ms']:.2f} ms wall"
                  + ("" if prof["on_device"] else " (no device lines: the host's)"),
                  "| line | busy ms | events | categories | heaviest |", "|---|---|---|---|---|"]
        for key, line in prof["lines"].items():
            cats = ", ".join(f"{c} {100 * v:.0f}%" for c, v in list(line["categories"].items())[:4])
            heavy = ", ".join(f"`{n[:40]}` {100 * v:.0f}%" for n, _, v in line["top"][:3])
            lines.append(f"| {key} | {line['busy_ms']:.2f} | {line['events']} | {cats} | {heavy} |")
    return lines


# -- tables ----------------------------------------------------------------------------------------
def _f(x, spec=",.0f"):
    return "-" if x is None else format(x, spec)


def _pct(x):
    return "-" if x is None else f"{100 * x:.1f}%"


def tables(r: dict) -> str:
    m = r["machine"]
    torch_peak = m.get("matmul_bf16_flops_torch")
    lines = [f"Device: {m['device']} ({m['platform']}, jax {m['jax']}); bf16 peak by datasheet "
             f"{_f(m['datasheet_bf16_flops'] and m['datasheet_bf16_flops'] / 1e12, '.0f')} TFLOP/s; measured now "
             f"through JAX ({m['matmul_n']}^3 products): bf16 {m['matmul_bf16_flops'] / 1e12:.1f} TFLOP/s, "
             f"float32 (default precision) {m['matmul_f32_flops'] / 1e12:.1f} TFLOP/s, one bf16 product into float32 "
             f"{_f(m.get('matmul_bf16_single_flops') and m['matmul_bf16_single_flops'] / 1e12, '.1f')} TFLOP/s; "
             f"through PyTorch: bf16 "
             f"{_f(torch_peak and torch_peak / 1e12, '.1f')} TFLOP/s. MFU 'measured' is against the faster bf16 "
             f"figure." + (f" XLA_FLAGS: `{m['xla_flags']}`." if m.get("xla_flags") else ""), "",
             "| hybrid train step | ours ms/step | tok/s | MFU (datasheet / measured) | NETY PyTorch ms/step | "
             "ratio | fast paths off / cuDNN attention only / cuDNN LSTM only ms/step |",
             "|---|---|---|---|---|---|---|"]
    for row in r["train"].get("rows", []):
        o, t = row["ours"], row.get("NETY PyTorch")
        fast = " / ".join(_f(row.get(label) and row[label]["s_per_step"] * 1e3, ".2f") for label in FAST_LABELS.values())
        lines.append(f"| {row['config'].split('.')[0]} {row['dtype']}, B={row['batch']} L={row['len']} | "
                     f"{o['s_per_step'] * 1e3:.2f} | {_f(o['tokens_per_s'])} | {_pct(o['mfu_datasheet'])} / "
                     f"{_pct(o['mfu_measured'])} | {_f(t and t['s_per_step'] * 1e3, '.2f')} | "
                     f"**{_f(row.get('ratio_vs_torch'), '.2f')}x** | {fast} |")
    lines += ["", f"| hybrid generate {TOKENS['gen']} tokens | ours tok/s | MFU (datasheet / measured) | "
              "HF BART generate tok/s | ratio | fast paths off tok/s |", "|---|---|---|---|---|---|"]
    for row in r["generate"].get("rows", []):
        o, h, off = row["ours"], row.get("HF BART generate"), row.get("ours, fast paths off")
        lines.append(f"| {row['dtype']}, batch {row['batch']} | {_f(o['tokens_per_s'])} | {_pct(o['mfu_datasheet'])} / "
                     f"{_pct(o['mfu_measured'])} | {_f(h and h['tokens_per_s'])} | "
                     f"**{_f(row.get('ratio_vs_hf'), '.2f')}x** | {_f(off and off['tokens_per_s'])} |")
    lines += gpt_tables(r.get("gpt", {}))
    lines += profile_tables(r.get("profile", {}))
    if r["skipped"]:
        lines += ["", f"Skipped (time budget): {', '.join(r['skipped'])}."]
    errors = [f"{k}: {r[k]['error']}" for k in PARTS if "error" in r.get(k, {})]
    if errors:
        lines += ["", "Failed: " + "; ".join(errors)]
    return "\n".join(lines)


def gpt_tables(g: dict) -> list:
    lines = []
    if "train" in g:
        t = g["train"]
        o, e, c = t["ours"], t.get("HF eager"), t.get("HF torch.compile")
        lines += ["", f"| GPT-2 124M train step ({g['dtype']}, no dropout) | ours ms/step | tok/s | MFU (datasheet / "
                  "measured) | HF eager ms/step | ratio | HF torch.compile ms/step | ratio |",
                  "|---|---|---|---|---|---|---|---|",
                  f"| B={t['batch']} x {t['len']} | {o['s_per_step'] * 1e3:.1f} | {_f(o['tokens_per_s'])} | "
                  f"{_pct(o['mfu_datasheet'])} / {_pct(o['mfu_measured'])} | {_f(e and e['s_per_step'] * 1e3, '.1f')} | "
                  f"**{_f(t.get('ratio_vs_eager'), '.2f')}x** | {_f(c and c['s_per_step'] * 1e3, '.1f')} | "
                  f"**{_f(t.get('ratio_vs_torch.compile'), '.2f')}x** |"]
    if "generate" in g:
        lines += ["", f"| GPT-2 124M generate {TOKENS['gen']} tokens (top-k 50) | ours tok/s | MFU (datasheet / measured) | "
                  "HF generate tok/s | ratio |", "|---|---|---|---|---|"]
        for row in g["generate"]:
            o, h = row["ours"], row.get("HF generate")
            lines.append(f"| batch {row['batch']} | {_f(o['tokens_per_s'])} | {_pct(o['mfu_datasheet'])} / "
                         f"{_pct(o['mfu_measured'])} | {_f(h and h['tokens_per_s'])} | "
                         f"**{_f(row.get('ratio_vs_hf'), '.2f')}x** |")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for bench-results.json and bench-gpu.md")
    p.add_argument("--tiny", action="store_true", help="tiny dimensions: a smoke run, not a measurement")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per measurement (median)")
    p.add_argument("--batch", type=int, default=256, help="hybrid training batch (sequences of 32 tokens)")
    p.add_argument("--budget", type=float, default=float(os.environ.get("NETY_GPU_BUDGET", 330)),
                   help="seconds after which no part starts ($NETY_GPU_BUDGET)")
    p.add_argument("--skip-hf", action="store_true", help="no HuggingFace references")
    p.add_argument("--parts", default=",".join(PARTS),
                   help=f"comma list, run in this order (default: {','.join(PARTS)}); the machine always")
    p.add_argument("--gpt-parts", default="train,generate", help="GPT-2's rows: train, generate or both")
    p.add_argument("--tag", default="", help="suffix of the result files' names (a second run beside the first)")
    args = p.parse_args()
    args.parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    args.gpt_parts = {x.strip() for x in args.gpt_parts.split(",") if x.strip()}
    unknown = [x for x in args.parts if x not in PARTS] + sorted(args.gpt_parts - {"train", "generate"})
    if unknown:
        p.error(f"unknown part(s): {', '.join(unknown)}; known: {', '.join(PARTS)} (--gpt-parts: train, generate)")
    if args.tiny:  # a smoke run of every code path, as short as it goes
        args.repeats, TOKENS["gen"] = 1, 8
    from nety_jax.runtime import enable_compilation_cache
    enable_compilation_cache()  # $NETY_JAX_COMPILE_CACHE: gpu_check.sh names the folder
    os.makedirs(args.out, exist_ok=True)
    budget = Budget(args.budget)
    results = {"machine": part_machine(args), **{k: {} for k in PARTS}, "skipped": budget.skipped, "seconds": {}}
    print(f"[bench_gpu] machine: {results['machine']}", flush=True)
    # in PARTS' order should the time budget run out; the files are rewritten after each part, so a run stopped from outside keeps what it measured
    failed, text = [], ""
    for name in args.parts:
        start = time.monotonic()
        try:
            results[name] = PARTS[name](args, results["machine"], budget)
        except Exception as e:  # noqa: BLE001 - a GPU hour is rare: one part's failure keeps the others
            import traceback
            traceback.print_exc()
            results[name] = {"error": f"{type(e).__name__}: {e}"}
            failed.append(name)
        results["seconds"][name] = round(time.monotonic() - start, 1)
        print(f"[bench_gpu] {name}: {results['seconds'][name]} s", flush=True)
        text = write_results(args.out, results, args.tag)
    print(text)
    if failed:
        print(f"[bench_gpu] failed parts: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


# the order they run in: GPT-2 (the headline targets), the hybrid's generation (never measured on a
# GPU before 2026-12-06's run ran out of time), the profiles, then the hybrid's training
PARTS = {"gpt": part_gpt, "generate": part_generate, "profile": part_profile, "train": part_train}


def write_results(out: str, results: dict, tag: str = "") -> str:
    text = tables(results)
    suffix = f"-{tag}" if tag else ""
    with open(os.path.join(out, f"bench-results{suffix}.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(out, f"bench-gpu{suffix}.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    return text


if __name__ == "__main__":
    sys.exit(main())
