"""Speed, side by side, in ONE run: nety-jax against PyTorch NETY and a HuggingFace peer.

    python scripts/bench.py [--repeats 5] [--dtype float32] [--no-doc] [--tiny]

Each part runs in its own process (so peak memory is its own), and inside a part the
frameworks alternate round by round (the machine is shared: a slow moment hits both).
--tiny (a smoke run, not a measurement) runs every part in one process, one PyTorch process
for both NETY rows, one GPT worker per framework for all its rows, and generates 8 tokens.
Medians over the rounds, warm-up excluded, the same number of threads for every
framework. Prints a Markdown table, appends it to docs/PERFORMANCE.md with the date
and machine, and writes bench-results.json in the working directory.

- machine: the fp32 (or --dtype) matmul peak through JAX and the memory copy bandwidth;
- training (NETY's dimensions, V=8000, batch 32, lengths 32, Adam): the jitted step of
  the parity config and of our base config, NETY's PyTorch step, tokens/s, MFU (an
  analytic FLOP count, scripts/flops.py), first-step compile time cold and from the
  persistent cache, peak RSS. Our parts run with glibc's malloc set as `nety-jax` sets it
  (runtime.keep_host_memory; NETY_JAX_HOST_MALLOC=default turns it off); NETY's PyTorch
  step runs in a process of its own as NETY runs it, and again in a third process with
  our setting (the generation references share the generation part's process);
- generation (64 forced tokens, top-k 50 / top-p 0.9 / temperature 0.8) at batch 1 and 64:
  ours, NETY's own loop (PyTorch re-creation, batch 1) and HuggingFace BART with NETY's
  decoder dimensions; the fraction of the weight-bandwidth bound at batch 1, MFU at 64;
  ours again with XLA's operations only (no CPU kernels of nety_jax.kernels: what an
  exported artifact runs), a program of its own checked to call none, in the same rounds;
- compilations during steady-state training over the bucketed corpus (must be 0);
- the GPT (configs/gpt2_124m.yaml) against HuggingFace GPT2LMHeadModel in PyTorch
  (scripts/bench_gpt.py): an AdamW train step at batch 8 x 256, generation of 64 tokens at
  batch 1 (greedy and top-k 50) and 64 (top-k 50) against HF generate with its KV cache;
  MFU and the fraction of the weight-bandwidth bound; HF eager (--hf-compile: torch.compile).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
PARTS = ("machine", "train", "generate", "recompiles", "gpt")


def run_parts(names: tuple, args) -> dict:
    """{part: its results}, the parts ``names`` run in turn in one process of scripts/bench_parts.py."""
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "bench_parts.py"), *names,
           "--repeats", str(args.repeats), "--dtype", args.dtype] + (["--tiny"] if args.tiny else []) \
        + (["--skip-hf"] if args.skip_hf else []) + (["--hf-compile"] if args.hf_compile else [])
    print(f"[bench] {', '.join(names)} ...", flush=True)
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        raise SystemExit(f"bench part(s) {', '.join(names)} failed (exit {done.returncode})")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return out if len(names) > 1 else {names[0]: out}


def run_all(args) -> dict:
    """Every part: each in a process of its own (its peak memory its own, its compilation cold);
    --tiny, a smoke run and not a measurement, runs them all in one process (their start-ups
    were much of its time)."""
    parts = {}
    for names in [PARTS] if args.tiny else [(name,) for name in PARTS]:
        parts.update(run_parts(names, args))
    return parts


def _fmt(x, spec=",.0f"):
    return "-" if x is None else format(x, spec)


def table(r: dict) -> str:
    m, t, g = r["machine"], r["train"], r["generate"]
    lines = [f"Machine: {m['device']}, {m['cores']} cores; matmul peak {m['peak_gflops']:.0f} GFLOP/s "
             f"({m['dtype']}, measured through JAX), copy bandwidth {m['copy_gbs']:.1f} GB/s.", "",
             "| what | nety-jax | reference, same run | ratio | notes |", "|---|---|---|---|---|"]
    tt = t["torch"]
    lines.append(f"| train step, parity config, V={t['vocab']}, B={t['batch']}, L={t['len']}, Adam | "
                 f"{t['parity']['s_per_step']:.3f} s/step ({_fmt(t['parity']['tokens_per_s'])} tok/s, MFU "
                 f"{100 * t['parity']['mfu']:.0f}%) | NETY in PyTorch {_fmt(tt and tt['s_per_step'], '.3f')} s/step "
                 f"(MFU {_fmt(tt and 100 * tt['mfu'], '.0f')}%) | **{_fmt(r['train_ratio_vs_torch'], '.2f')}x** | "
                 f"{t['gflop_parity']:.0f} GFLOP/step; host malloc: ours {t['host_malloc']}, PyTorch default |")
    ts = t["torch_same_malloc"]
    lines.append(f"| the same, PyTorch with our malloc setting | - | NETY in PyTorch {_fmt(ts and ts['s_per_step'], '.3f')} "
                 f"s/step | {_fmt(r['train_ratio_vs_torch_same_malloc'], '.2f')}x | runtime.keep_host_memory in both |")
    lines.append(f"| train step, base config (our defaults) | {t['base']['s_per_step']:.3f} s/step "
                 f"({_fmt(t['base']['tokens_per_s'])} tok/s, MFU {100 * t['base']['mfu']:.0f}%) | - | - | "
                 f"{t['gflop_base']:.0f} GFLOP/step |")
    for b in ("1", "64"):
        row = g["batches"][b]
        refs = [f"HF BART {_fmt(row.get('hf'))}"] + ([f"NETY's loop {_fmt(row.get('nety'))}"] if b == "1" else [])
        ratio = f"{_fmt(r[f'gen_b{b}_ratio_vs_hf'], '.2f')}x HF" + \
            (f", {_fmt(r['gen_b1_ratio_vs_nety'], '.1f')}x NETY" if b == "1" else "")
        note = (f"{100 * r['gen_b1_fraction_of_bandwidth_bound']:.0f}% of the {row['bound']:,.0f} tok/s "
                f"bandwidth bound ({row['weight_mb']:.0f} MB/token)") if b == "1" else \
            f"MFU {100 * r['gen_b64_mfu']:.0f}% (XLA only: {100 * r['gen_b64_mfu_xla_only']:.0f}%)"
        note += f"; XLA's operations only (no CPU kernels) {_fmt(row.get('xla'))} tok/s"
        lines.append(f"| generate {g['new_tokens']} tokens, batch {b} | {_fmt(row['jax'])} tok/s | "
                     f"{'; '.join(refs)} tok/s | **{ratio}** | {note} |")
    lines.append(f"| first train step (compilation) | {r['compile_train_s']:.1f} s cold, "
                 f"{t['parity']['compile_cached_s'] - t['parity']['s_per_step']:.1f} s from the persistent cache | "
                 f"- | - | NETY's size; first step's wall time less one step: {t['parity']['compile_s']:.1f} s / "
                 f"{t['parity']['compile_cached_s']:.1f} s with it |")
    lines.append(f"| first generate call (compilation) | {r['compile_generate_s']:.1f} s cold, "
                 f"{g['compile_cached_s'] - g['batches']['1']['seconds']:.1f} s from the cache | - | - | batch 1; "
                 f"{g['compile_s']:.1f} s / {g['compile_cached_s']:.1f} s with the call |")
    lines.append(f"| compilations in steady-state training | {r['recompiles_steady_state']} | - | - | "
                 f"{r['recompiles']['shapes']} bucket shapes warmed up, then {r['recompiles']['steps']} steps |")
    lines += gpt_rows(r)
    lines.append(f"| peak RSS | train {r['peak_rss_train_mb']:,.0f} MB, generate "
                 f"{r['peak_rss_generate_mb']:,.0f} MB, GPT part (the larger of ours and HF) {r['peak_rss_gpt_mb']:,.0f} MB | - | - | one process each |")
    return "\n".join(lines)


def gpt_rows(r: dict) -> list[str]:
    tr, gen = r["gpt_train"], r["gpt_generate"]
    hf = "HF GPT-2 in PyTorch" + (" (torch.compile)" if tr["hf_compile"] else " (eager)")
    s = tr["seconds"]
    lines = [f"| GPT-2 124M train step (gpt2_124m), B={tr['batch']}, L={tr['len']}, AdamW | {s['ours']:.3f} s/step "
             f"({_fmt(r['gpt_train_tokens_per_s'])} tok/s, MFU {100 * r['gpt_train_mfu']:.0f}%) | {hf} "
             f"{_fmt(s.get('hf'), '.3f')} s/step (MFU {_fmt(r['gpt_train_mfu_hf'] and 100 * r['gpt_train_mfu_hf'], '.0f')}%)"
             f" | **{_fmt(r['gpt_train_ratio_vs_hf'], '.2f')}x** | {tr['flops'] / 1e9:.0f} GFLOP/step |"]
    for key, row in gen["rows"].items():
        tps = row["tokens_per_s"]
        note = (f"{100 * row['fraction_of_bandwidth_bound']:.0f}% of the {r['gpt_bandwidth_bound_tokens_per_s']:,.1f} "
                f"tok/s bandwidth bound ({gen['weight_mb']:.0f} MB/token)") if row["batch"] == 1 else \
            f"MFU {100 * row['mfu']:.0f}%"
        mode = "greedy" if row["mode"] == "greedy" else "top-k 50"
        lines.append(f"| GPT generate {gen['new_tokens']} tokens, batch {row['batch']}, {mode} | {_fmt(tps['ours'])} "
                     f"tok/s | HF generate (KV cache) {_fmt(tps.get('hf'))} tok/s | "
                     f"**{_fmt(r[f'gpt_gen_{key}_ratio_vs_hf'], '.2f')}x** | {note} |")
    return lines


def summarize_gpt(m: dict, g: dict) -> dict:
    """bench_gpt's ratios and MFU against the machine part's peak; the issue's keys name the
    batch-1 and large-batch top-k rows."""
    import bench_gpt
    out = bench_gpt.summarize(g["train"], g["generate"], m["peak_gflops"], m["copy_gbs"])
    rows = list(g["generate"]["rows"])
    b1, big = "b1_topk", [k for k in rows if k.endswith("_topk") and k != "b1_topk"][-1]
    out.update(gpt_gen_b1_ratio_vs_hf=out[f"gpt_gen_{b1}_ratio_vs_hf"],
               gpt_gen_b64_ratio_vs_hf=out[f"gpt_gen_{big}_ratio_vs_hf"],
               gpt_gen_b1_fraction_of_bandwidth_bound=out[f"gpt_gen_{b1}_fraction_of_bandwidth_bound"],
               gpt_gen_b64_mfu=out[f"gpt_gen_{big}_mfu"], peak_rss_gpt_mb=g["peak_rss_mb"])
    return out


def summarize(parts: dict) -> dict:
    m, t, g, rc = parts["machine"], parts["train"], parts["generate"], parts["recompiles"]
    ratio = lambda a, b: a / b if a and b else None
    b1, b64 = g["batches"]["1"], g["batches"]["64"]
    for key in ("parity", "base", "torch", "torch_same_malloc"):  # MFU: analytic FLOPs / time / the measured peak
        if t[key]:
            t[key]["mfu"] = t[key]["gflops"] / m["peak_gflops"]
    b1["bound"] = m["copy_gbs"] * 1e3 / b1["weight_mb"]  # tokens/s if only the weights were read
    b64["mfu"] = b64["flops"] / b64["seconds"] / 1e9 / m["peak_gflops"]
    b64["mfu_xla"] = b64["flops"] / b64["seconds_xla"] / 1e9 / m["peak_gflops"]
    return {**{k: v for k, v in parts.items() if k != "gpt"}, **summarize_gpt(m, parts["gpt"]),
            "train_ratio_vs_torch": ratio(t["torch"] and t["torch"]["s_per_step"], t["parity"]["s_per_step"]),
            "train_ratio_vs_torch_same_malloc": ratio(t["torch_same_malloc"] and t["torch_same_malloc"]["s_per_step"],
                                                      t["parity"]["s_per_step"]),
            "train_mfu": t["parity"]["mfu"], "train_mfu_torch": t["torch"] and t["torch"]["mfu"],
            "gen_b1_ratio_vs_hf": ratio(b1["jax"], b1.get("hf")), "gen_b64_ratio_vs_hf": ratio(b64["jax"], b64.get("hf")),
            "gen_b1_ratio_vs_nety": ratio(b1["jax"], b1.get("nety")),
            "gen_b1_fraction_of_bandwidth_bound": b1["jax"] / b1["bound"], "gen_b64_mfu": b64["mfu"],
            "gen_b64_mfu_xla_only": b64["mfu_xla"], "gen_b64_ratio_vs_xla_only": ratio(b64["jax"], b64.get("xla")),
            "gen_b1_ratio_vs_xla_only": ratio(b1["jax"], b1.get("xla")),
            # the first call's wall time less one steady-state call: tracing, lowering and XLA
            "compile_train_s": t["parity"]["compile_s"] - t["parity"]["s_per_step"],
            "compile_generate_s": g["compile_s"] - b1["seconds"],
            "recompiles_steady_state": rc["compilations"], "peak_rss_train_mb": t["peak_rss_mb"],
            "peak_rss_generate_mb": g["peak_rss_mb"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="rounds per measurement (median)")
    p.add_argument("--dtype", default="float32", help="compute dtype (bfloat16 on GPU)")
    p.add_argument("--tiny", action="store_true", help="tiny dims: a smoke run, not a measurement")
    p.add_argument("--skip-hf", action="store_true", help="no HuggingFace BART (transformers missing)")
    p.add_argument("--hf-compile", action="store_true", help="torch.compile HF's GPT-2 (default: eager)")
    p.add_argument("--no-doc", action="store_true", help="do not append to docs/PERFORMANCE.md")
    p.add_argument("--json", default="bench-results.json", help="results file (working directory)")
    args = p.parse_args()
    results = summarize(run_all(args))
    text = table(results)
    print(text)
    with open(args.json, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    if not args.no_doc and not args.tiny:
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
        with open(os.path.join(ROOT, "docs", "PERFORMANCE.md"), "a", encoding="utf-8") as f:
            f.write(f"\n### `make bench`, {stamp}, {platform.node()} ({results['machine']['device']})\n\n"
                    f"{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
