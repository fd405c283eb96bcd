"""The ``nety-jax`` command. Errors are one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import sys

from nety_jax import __version__
from nety_jax.errors import NetyError

EXIT_ERROR = 2
DECODE_FLAGS = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "beam": "beam_size",
                "length_penalty": "length_penalty", "max_new_tokens": "max_new_tokens",
                "min_new_tokens": "min_new_tokens", "no_repeat_ngram": "no_repeat_ngram",
                "speculate": "speculate", "draft_tokens": "draft_tokens"}


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (repeatable), e.g. --set model.d_model=256")


def _mesh_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mesh-tensor", type=int, default=1, metavar="N",
                   help="tensor-parallel generation: the weights split over N of this host's devices "
                        "(heads, MLP width, vocabulary), for a model one device cannot hold (default 1)")


def _out_args(p: argparse.ArgumentParser, out: str, replaces: str) -> None:
    """``--out`` (what ``out`` says) and ``--overwrite``: replace ``replaces`` found there."""
    p.add_argument("--out", required=True, help=out)
    p.add_argument("--overwrite", action="store_true", help=f"replace {replaces} in --out")


def _decode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--temperature", type=float, help="0 = greedy (default: the run's decode config)")
    p.add_argument("--top-k", type=int, help="keep the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=float, help="nucleus: smallest set reaching this probability")
    p.add_argument("--beam", type=int, help="beam size (> 1: beam search)")
    p.add_argument("--length-penalty", type=float, help="beam search alpha")
    p.add_argument("--max-new-tokens", type=int, help="reply length limit")
    p.add_argument("--min-new-tokens", type=int, help="forbid <eos> before this many tokens")
    p.add_argument("--no-repeat-ngram", type=int, help="ban repeated n-grams of this size")
    p.add_argument("--speculate", choices=("none", "ngram"),
                   help="ngram: draft tokens from the prompt and reply so far, verified in one forward "
                        "(same replies, faster on text that repeats its context)")
    p.add_argument("--draft-tokens", type=int, help="speculation: tokens drafted per step")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")


def _decode_settings(args) -> dict:
    return {name: getattr(args, flag) for flag, name in DECODE_FLAGS.items()
            if getattr(args, flag) is not None}


def _text_arg(value: str, what: str) -> str:
    if any("\udc80" <= c <= "\udcff" for c in value):
        raise NetyError(f"{what}: not valid UTF-8")
    return value


def cmd_info(args) -> int:
    from nety_jax.config import load_config
    from nety_jax.models import get_model
    if args.checkpoint:
        from nety_jax.runs.files import read_run_config
        if args.config:
            raise NetyError("give --config or --checkpoint, not both")
        cfg = read_run_config(args.checkpoint)
        if args.overrides:
            from nety_jax.config import apply_overrides, from_dict
            cfg = from_dict(apply_overrides(cfg.to_dict(), args.overrides), where="--set")
    else:
        cfg = load_config(args.config, args.overrides)
    rows = get_model(cfg.model).parameter_rows()
    width = max(len(name) for name, _ in rows)
    print(f"model.arch: {cfg.model.arch}, vocabulary {cfg.model.vocab_size:,}"
          + (" (the run's tokenizer)" if args.checkpoint else ""))
    print(f"{'module':<{width}}  {'parameters':>12}")
    print("-" * (width + 14))
    for name, count in rows:
        print(f"{name:<{width}}  {count:>12,}")
    total = rows[-1][1]
    print(f"memory: {total * 4 / 2**20:.1f} MB of float32 parameters; "
          f"{total * 16 / 2**20:.1f} MB with Adam state and gradients")
    return 0


def cmd_plan(args) -> int:
    """The memory planner's dry run: bytes per device of a training step, nothing trained."""
    from nety_jax.config import load_config
    from nety_jax.training.memory import plan_config
    overrides = list(args.overrides) + ([f"train.parallel={args.parallel}"] if args.parallel else [])
    plan = plan_config(load_config(args.config, overrides))  # refuses what does not fit
    print(plan.describe())
    return 0


def cmd_train(args) -> int:
    from nety_jax.config import load_config
    from nety_jax.training.loop import train
    if args.plan:
        return cmd_plan(args)
    overrides = list(args.overrides)
    for flag, key in (("steps", "train.steps"), ("seed", "train.seed"), ("parallel", "train.parallel")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    if args.data and args.text:
        raise NetyError("give --data (pairs, seq2seq models) or --text (language models), not both")
    source = None
    if args.init_from:
        from nety_jax.training.init_from import finetune_config, load_source
        source = load_source(args.init_from)
        cfg = finetune_config(source, args.config, overrides)
    else:
        cfg = load_config(args.config, overrides)
    from nety_jax.models import get_model
    from nety_jax.tasks import check_data_option
    if args.text or args.data:
        check_data_option(get_model(cfg.model).task, "--text" if args.text else "--data", cfg.model.arch)
    summary = train(cfg, args.workdir, args.text or args.data, skip_bad=args.skip_bad,
                    progress=not args.no_progress, init_from=source)
    val = summary.get("val") or {}
    extra = f"; validation loss {val['loss']:.3f}" if "loss" in val else ""
    if summary.get("skipped_records"):
        extra += f"; skipped {summary['skipped_records']} damaged records of the prepared data"
    print(f"{summary['status']} at step {summary['step']} in {summary['workdir']}{extra}")
    return 0


def cmd_prepare(args) -> int:
    from nety_jax.config import load_config
    from nety_jax.models import get_model
    from nety_jax.tasks import check_data_option
    from nety_jax.training.prepare_data import prepare_data
    if bool(args.data) == bool(args.text):
        raise NetyError("give --data FILE (pairs, seq2seq models) or --text FILE... (language models)")
    cfg = load_config(args.config, args.overrides)
    check_data_option(get_model(cfg.model).task, "--text" if args.text else "--data", cfg.model.arch)
    prepare_data(cfg, args.text or [args.data], args.out, args.tokenizer, args.skip_bad, args.workers,
                 args.shard_size, args.overwrite, progress=not args.no_progress)
    return 0


def _read_prompts(args) -> list[str]:
    prompts = [_text_arg(p, "--prompt") for p in (args.prompt or [])]
    if args.file:
        from nety_jax.data.readers import read_lines
        for _, line, error in read_lines(args.file, "prompts file"):
            if error:
                raise NetyError(error)
            if line.strip():
                prompts.append(line.strip())
    if not prompts:
        raise NetyError("no prompt: give --prompt TEXT or --file FILE")
    for i, p in enumerate(prompts):
        if not p.strip():
            raise NetyError(f"prompt {i + 1} is empty")
    return prompts


def _load(args):
    from nety_jax.serving.options import check_exported, check_source
    check_source(getattr(args, "checkpoint", None), getattr(args, "exported", None))
    if args.exported:
        check_exported(args.exported, None, args.mesh_tensor)
        from nety_jax.serving.export import load_exported
        return load_exported(args.exported)
    from nety_jax.serving.pretrained import load_pretrained
    return load_pretrained(args.checkpoint, mesh_tensor=args.mesh_tensor)


def _generate(args, show_prompt: bool) -> int:
    if args.num_samples < 1:
        raise NetyError(f"--num-samples={args.num_samples} must be >= 1")
    prompts = _read_prompts(args)
    model = _load(args)
    if show_prompt:
        from nety_jax.tasks import require_continuation
        require_continuation(model.task, "complete")
    if args.batch_size < 1:
        raise NetyError(f"--batch-size={args.batch_size} must be >= 1")
    replies = model.generate(prompts, seed=args.seed, num_samples=args.num_samples, with_prompt=show_prompt,
                             batch_size=args.batch_size, **_decode_settings(args))
    many = len(prompts) > 1 or args.num_samples > 1
    for prompt, outs in zip(prompts, replies):
        for out in outs:
            if show_prompt:
                print(out)
            else:
                out = out or "(empty reply)"
                print(f"> {prompt}\n{out}" if many else out)
    return 0


def cmd_generate(args) -> int:
    return _generate(args, show_prompt=False)


def cmd_complete(args) -> int:
    return _generate(args, show_prompt=True)


def cmd_predict_next(args) -> int:
    from nety_jax.serving.pretrained import load_pretrained
    text = _text_arg(args.text, "text")
    if not text.strip():
        raise NetyError("text is empty: give the words so far")
    for word, prob in load_pretrained(args.checkpoint, mesh_tensor=args.mesh_tensor).predict_next(text, args.top_k):
        print(f"{word}\t{prob:.4f}")
    return 0


def cmd_chat(args) -> int:
    from nety_jax.serving.chat import chat
    from nety_jax.serving.pretrained import load_pretrained
    model = load_pretrained(args.checkpoint, prefix_cache_mb=_prefix_cache_mb(args), mesh_tensor=args.mesh_tensor)
    return chat(model, seed=args.seed, **_decode_settings(args))


def _prefix_cache_mb(args) -> float:
    if not 0 <= args.prefix_cache_mb < float("inf"):
        raise NetyError(f"--prefix-cache-mb must be a number >= 0, got {args.prefix_cache_mb}")
    return args.prefix_cache_mb


def cmd_export(args) -> int:
    from nety_jax.serving.export import export_run
    path = export_run(args.checkpoint, args.out, batch_size=args.batch_size, overrides=args.overrides,
                      overwrite=args.overwrite)
    print(f"exported to {path}")
    return 0


def cmd_import_torch(args) -> int:
    from nety_jax.models.registry import import_torch
    out = import_torch(args.state_dict, args.vocab, args.out, args.config, args.overrides, args.overwrite)
    print(f"imported {args.state_dict} into {out}")
    return 0


def cmd_export_torch(args) -> int:
    from nety_jax.models.registry import export_torch
    export_torch(args.checkpoint, args.out, args.overwrite)
    print(f"wrote {args.out}")
    return 0


def cmd_import_hf(args) -> int:
    from nety_jax.models.registry import import_hf
    print(f"imported {args.model} into {import_hf(args.model, args.out, args.overwrite)}")
    return 0


def cmd_export_hf(args) -> int:
    from nety_jax.models.registry import export_hf
    out = export_hf(args.checkpoint, args.out, args.overwrite)
    print(f"wrote {out} (transformers: GPT2LMHeadModel / AutoTokenizer)")
    return 0


def cmd_serve(args) -> int:
    from nety_jax.serving.server import serve
    return serve(args.checkpoint, args.exported, args.host, args.port, args.max_batch, args.batch_window_ms,
                 args.queue_size, args.max_tokens, args.chunk, args.name, args.batching, args.slots,
                 _prefix_cache_mb(args), args.mesh_tensor, args.speculate, args.draft_tokens, args.warm_up,
                 args.stream_interval_ms, args.admit_batch,
                 [f"--{k.replace('_', '-')}" for k, v in SERVE_DEFAULTS.items() if getattr(args, k) != v])


# serve's flags whose use the server checks against the model it serves (serving.options.check_exported)
SERVE_DEFAULTS = {"slots": 32, "chunk": 8, "prefix_cache_mb": 256}


def cmd_quantize(args) -> int:
    from nety_jax.serving.quantize import quantize_run
    quantize_run(args.checkpoint, args.out, args.activations, overwrite=args.overwrite)
    return 0


def _add_commands(sub) -> None:
    """Every subcommand, in the order ``nety-jax --help`` lists them."""
    for add in (_add_training_commands, _add_inference_commands, _add_export_and_serve_commands,
                _add_conversion_commands):
        add(sub)


def _add_training_commands(sub) -> None:
    p = sub.add_parser("info", help="parameter count per module and memory footprint")
    _config_args(p)
    p.add_argument("--checkpoint", help="a run directory: its config and trained vocabulary")
    p.set_defaults(fn=cmd_info)

    p = sub.add_parser("train", help="train (or resume) a model")
    _config_args(p)
    p.add_argument("--data", help="JSONL or TSV pairs, seq2seq models (default: the embedded corpus), "
                                  "or a directory `nety-jax prepare` wrote")
    p.add_argument("--text", nargs="+", help="plain text file(s), language models (default: the shipped text), "
                                             "or a directory `nety-jax prepare` wrote")
    p.add_argument("--workdir", default="runs/default", help="run directory (resumes if it has checkpoints)")
    p.add_argument("--steps", type=int, help="total training steps (train.steps)")
    p.add_argument("--seed", type=int, help="seed for init, split, shuffling and dropout (train.seed)")
    p.add_argument("--parallel", choices=("none", "pmap", "shard_map", "mesh"), help="train.parallel")
    p.add_argument("--init-from", metavar="RUN_OR_HF_DIR",
                   help="start from these weights (a run directory or a HuggingFace GPT-2 directory): "
                        "architecture and tokenizer from it, data/optimizer/schedule from the config")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip malformed lines, or damaged records of a prepared directory (counted in the log)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--plan", action="store_true",
                   help="print the memory plan (bytes per device) and exit without training")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("prepare", help="tokenize a corpus once into shards that `train --data/--text DIR` streams")
    _config_args(p)
    p.add_argument("--data", help="JSONL or TSV pairs (seq2seq models)")
    p.add_argument("--text", nargs="+", help="plain text file(s) (language models)")
    _out_args(p, "new directory for the shards and their manifest", "an earlier prepare output")
    p.add_argument("--tokenizer", metavar="RUN_OR_FILE",
                   help="use this tokenizer (a run directory or a SentencePiece .model file) instead of training one")
    p.add_argument("--workers", type=int, default=0, help="worker processes (default: one per core)")
    p.add_argument("--shard-size", type=int, default=50_000, help="examples (pairs or lines) per shard")
    p.add_argument("--skip-bad", action="store_true", help="skip malformed lines (counted in the log)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_prepare)

    p = sub.add_parser("plan", help="memory per device of a training step (parameters, optimizer, "
                                    "activations), without training")
    _config_args(p)
    p.add_argument("--parallel", choices=("none", "pmap", "shard_map", "mesh"), help="train.parallel")
    p.set_defaults(fn=cmd_plan)


def _add_inference_commands(sub) -> None:
    for name, fn, text in (("generate", cmd_generate, "replies (or continuations) to prompts, batched"),
                           ("complete", cmd_complete, "language models: prompt + continuation")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--checkpoint", help="run directory")
        p.add_argument("--exported", help="directory written by `nety-jax export`")
        p.add_argument("--prompt", action="append", help="a prompt (repeatable)")
        p.add_argument("--file", help="a file with one prompt per line")
        p.add_argument("--num-samples", type=int, default=1, help="replies per prompt")
        p.add_argument("--batch-size", type=int, default=256,
                       help="at most this many rows (prompts x samples) through the model at once (default 256)")
        _mesh_arg(p)
        _decode_args(p)
        p.set_defaults(fn=fn)

    p = sub.add_parser("predict-next", help="language models: the k most likely next words")
    p.add_argument("--checkpoint", required=True, help="run directory")
    p.add_argument("text", help="the text so far")
    p.add_argument("--top-k", type=int, default=5, help="how many words")
    _mesh_arg(p)
    p.set_defaults(fn=cmd_predict_next)

    p = sub.add_parser("chat", help="talk with a model at the terminal")
    p.add_argument("--checkpoint", required=True, help="run directory")
    p.add_argument("--prefix-cache-mb", type=float, default=64,
                   help="keep the prefill of recent prompts (the history) up to this size; 0: off")
    _mesh_arg(p)
    _decode_args(p)
    p.set_defaults(fn=cmd_chat)


def _add_export_and_serve_commands(sub) -> None:
    p = sub.add_parser("export", help="serialize the jitted generate function (jax.export)")
    p.add_argument("--checkpoint", required=True, help="run directory")
    _out_args(p, "output directory", "an earlier export")
    p.add_argument("--batch-size", type=int, default=0, help="fixed batch size (0: symbolic)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="decode.KEY=VALUE", help="decode defaults and static settings baked in")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server with continuous batching")
    p.add_argument("--checkpoint", help="run directory")
    p.add_argument("--exported", help="directory written by `nety-jax export`")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000; 0: any free port)")
    p.add_argument("--batching", choices=("continuous", "dynamic"),
                   help="continuous (default with --checkpoint): rows join and leave a running batch; "
                        "dynamic (with --exported): gather for --batch-window-ms, run to the end")
    p.add_argument("--slots", type=int, default=SERVE_DEFAULTS["slots"], help="continuous: rows decoded at once")
    p.add_argument("--max-batch", type=int, default=32, help="dynamic: rows per compiled batch")
    p.add_argument("--batch-window-ms", type=float, default=5.0, help="dynamic: how long to gather a batch")
    p.add_argument("--queue-size", type=int, default=64, help="waiting requests before 429")
    p.add_argument("--max-tokens", type=int,
                   help="the most max_tokens a request may ask (continuous default: the model's room "
                        "after the prompt; dynamic: the compiled maximum, default the run's)")
    p.add_argument("--chunk", type=int, default=SERVE_DEFAULTS["chunk"],
                   help="tokens per decode chunk (between stream updates)")
    p.add_argument("--admit-batch", type=int,
                   help="continuous: while every slot is taken and requests wait, a chunk runs on until this "
                        "many rows have finished (at most as many as wait), so one prefill refills their slots "
                        "(1 to --slots; default 2, or --slots if fewer)")
    p.add_argument("--stream-interval-ms", type=float,
                   help="the least time between two pieces of a streamed reply (default 20; its first text "
                        "and its end go at once; 0: a piece every chunk)")
    p.add_argument("--name", help="the model id clients see (default: the directory name)")
    p.add_argument("--prefix-cache-mb", type=float, default=SERVE_DEFAULTS["prefix_cache_mb"],
                   help="keep the prefill of recent prompts up to this size for prompts sharing their start; 0: off")
    _mesh_arg(p)
    p.add_argument("--speculate", choices=("none", "ngram"), default="none",
                   help="ngram: every request speculates with prompt-lookup drafts (same replies; needs "
                        "--batching dynamic, the default with it)")
    p.add_argument("--draft-tokens", type=int, default=4, help="speculation: tokens drafted per step (1-16)")
    p.add_argument("--no-warm-up", dest="warm_up", action="store_false",
                   help="skip compiling every prompt and batch shape before listening (they then compile "
                        "on first use, under load)")
    p.set_defaults(fn=cmd_serve)


def _add_conversion_commands(sub) -> None:
    p = sub.add_parser("quantize", help="int8 weight-only copy of a run, for inference")
    p.add_argument("--checkpoint", required=True, help="run directory")
    _out_args(p, "new run directory", "an earlier quantize output")
    p.add_argument("--activations", default="float32", choices=("float32", "bfloat16"),
                   help="compute dtype of the quantized model")
    p.set_defaults(fn=cmd_quantize)

    p = sub.add_parser("import-torch", help="NETY PyTorch state dict -> run directory")
    p.add_argument("--state-dict", required=True, help="NETY's state_dict (.pt)")
    p.add_argument("--vocab", required=True, help="NETY's vocab.json")
    _out_args(p, "output run directory (new or empty)", "an earlier import-torch output")
    _config_args(p)
    p.set_defaults(fn=cmd_import_torch)

    p = sub.add_parser("import-hf", help="HuggingFace GPT-2 directory -> run directory")
    p.add_argument("--model", required=True, help="a directory as save_pretrained writes it (config.json, weights, tokenizer)")
    _out_args(p, "new run directory", "an earlier import-hf output")
    p.set_defaults(fn=cmd_import_hf)

    p = sub.add_parser("export-hf", help="GPT run directory -> HuggingFace GPT-2 directory")
    p.add_argument("--checkpoint", required=True, help="run directory (model.arch gpt, data.tokenizer hf)")
    _out_args(p, "new directory", "an earlier export-hf output")
    p.set_defaults(fn=cmd_export_hf)

    p = sub.add_parser("export-torch", help="parity-mode run directory -> NETY state dict")
    p.add_argument("--checkpoint", required=True, help="run directory")
    _out_args(p, "output .pt file", "a PyTorch state dict")
    p.set_defaults(fn=cmd_export_torch)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nety-jax", description=(
        "NETY's model family in JAX (the hybrid BiLSTM/Transformer seq2seq model, a GPT and a "
        "recurrent LM): train, generate, chat, export, serve."))
    parser.add_argument("--version", action="version", version=f"nety-jax {__version__}")
    parser.add_argument("--compile-cache", metavar="DIR",
                        help="persistent compilation cache (default: ~/.cache/nety-jax/jax)")
    parser.add_argument("--no-compile-cache", action="store_true", help="do not cache compiled programs")
    _add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def _quiet_libraries() -> None:
    """Orbax and absl log informational warnings that are noise at a terminal."""
    import logging
    import warnings
    try:
        from absl import logging as absl_logging
        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:
        pass
    logging.getLogger("absl").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="Sharding info not provided")
    warnings.filterwarnings("ignore", message=".*Couldn't find sharding info.*")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        from nety_jax.runtime import enable_compilation_cache, keep_host_memory
        keep_host_memory()  # before JAX starts (see runtime.py)
        enable_compilation_cache("off" if args.no_compile_cache else args.compile_cache)
        code = args.fn(args)
        sys.stdout.flush()  # here, where a closed pipe is caught below, not at the interpreter's exit
        return code
    except NetyError as e:
        print(f"nety-jax: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("nety-jax: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`... | head`): stop quietly, as Unix tools do
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail
        return 141


if __name__ == "__main__":
    sys.exit(main())
