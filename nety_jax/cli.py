"""The ``nety-jax`` command. Errors are one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import sys

from nety_jax.errors import NetyError

EXIT_ERROR = 2


def _config_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--config", required=required, help="YAML config (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (repeatable), e.g. --set model.d_model=256")


def _decode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--temperature", type=float, help="0 = greedy (default: the run's decode config)")
    p.add_argument("--top-k", type=int, help="keep the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=float, help="nucleus: smallest set reaching this probability")
    p.add_argument("--beam", type=int, help="beam size (> 1: beam search)")
    p.add_argument("--length-penalty", type=float, help="beam search alpha")
    p.add_argument("--max-new-tokens", type=int, help="reply length limit")
    p.add_argument("--min-new-tokens", type=int, help="forbid <eos> before this many tokens")
    p.add_argument("--no-repeat-ngram", type=int, help="ban repeated n-grams of this size")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")


def _decode_overrides(args) -> dict:
    return {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
            "beam_size": args.beam, "length_penalty": args.length_penalty,
            "max_new_tokens": args.max_new_tokens, "min_new_tokens": args.min_new_tokens,
            "no_repeat_ngram": args.no_repeat_ngram}


def cmd_info(args) -> int:
    from nety_jax.config import load_config
    from nety_jax.model import parameter_table
    cfg = load_config(args.config, args.overrides)
    rows = parameter_table(cfg.model)
    width = max(len(name) for name, _ in rows)
    print(f"{'module':<{width}}  {'parameters':>12}")
    print("-" * (width + 14))
    for name, count in rows:
        print(f"{name:<{width}}  {count:>12,}")
    total = rows[-1][1]
    print(f"memory: {total * 4 / 2**20:.1f} MB of float32 parameters; "
          f"{total * 16 / 2**20:.1f} MB with Adam state and gradients")
    return 0


def cmd_train(args) -> int:
    from nety_jax.config import load_config
    from nety_jax.train import train
    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    if args.parallel is not None:
        overrides.append(f"train.parallel={args.parallel}")
    cfg = load_config(args.config, overrides)
    summary = train(cfg, args.workdir, args.data, skip_bad=args.skip_bad,
                    progress=not args.no_progress)
    val = summary.get("val") or {}
    extra = f"; validation loss {val['loss']:.3f}" if "loss" in val else ""
    print(f"{summary['status']} at step {summary['step']} in {summary['workdir']}{extra}")
    return 0


def _read_prompts(args) -> list[str]:
    prompts = list(args.prompt or [])
    if args.file:
        try:
            with open(args.file, encoding="utf-8") as f:
                prompts += [line.strip() for line in f if line.strip()]
        except FileNotFoundError:
            raise NetyError(f"{args.file}: prompt file not found") from None
        except UnicodeDecodeError:
            raise NetyError(f"{args.file}: not UTF-8 text") from None
    if not prompts:
        raise NetyError("no prompt: give --prompt TEXT or --file FILE")
    for i, p in enumerate(prompts):
        if not p.strip():
            raise NetyError(f"prompt {i + 1} is empty")
    return prompts


def cmd_generate(args) -> int:
    prompts = _read_prompts(args)
    if bool(args.checkpoint) == bool(args.exported):
        raise NetyError("give exactly one of --checkpoint DIR or --exported DIR")
    if args.exported:
        from nety_jax.export import load_exported
        if any(v is not None for v in _decode_overrides(args).values()):
            raise NetyError("--exported runs with the decode settings fixed at export time; "
                            "re-export with --set decode.KEY=VALUE to change them")
        replies = load_exported(args.exported).generate(prompts, seed=args.seed,
                                                        num_samples=args.num_samples)
    else:
        from nety_jax.pretrained import load_pretrained
        replies = load_pretrained(args.checkpoint).generate(
            prompts, seed=args.seed, num_samples=args.num_samples, **_decode_overrides(args))
    for prompt, outs in zip(prompts, replies):
        for out in outs:
            out = out or "(empty reply)"
            print(f"> {prompt}\n{out}" if len(prompts) > 1 or args.num_samples > 1 else out)
    return 0


def cmd_chat(args) -> int:
    from nety_jax.chat import chat
    from nety_jax.pretrained import load_pretrained
    return chat(load_pretrained(args.checkpoint), seed=args.seed, **_decode_overrides(args))


def cmd_export(args) -> int:
    from nety_jax.export import export_run
    path = export_run(args.checkpoint, args.out, batch_size=args.batch_size, overrides=args.overrides)
    print(f"exported to {path}")
    return 0


def cmd_import_torch(args) -> int:
    from nety_jax.torch_io import import_torch
    out = import_torch(args.state_dict, args.vocab, args.out, args.config, args.overrides)
    print(f"imported {args.state_dict} into {out}")
    return 0


def cmd_export_torch(args) -> int:
    from nety_jax.torch_io import export_torch
    export_torch(args.checkpoint, args.out)
    print(f"wrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nety-jax", description=(
        "NETY's hybrid BiLSTM/Transformer seq2seq model in JAX: train, generate, chat, export."))
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="parameter count per module and memory footprint")
    _config_args(p)
    p.set_defaults(fn=cmd_info)

    p = sub.add_parser("train", help="train (or resume) a model")
    _config_args(p)
    p.add_argument("--data", help="JSONL or TSV pairs (default: the embedded French corpus)")
    p.add_argument("--workdir", default="runs/default", help="run directory (resumes if it has checkpoints)")
    p.add_argument("--steps", type=int, help="total training steps (train.steps)")
    p.add_argument("--seed", type=int, help="seed for init, shuffling and dropout (train.seed)")
    p.add_argument("--parallel", choices=("none", "pmap", "shard_map"), help="train.parallel")
    p.add_argument("--skip-bad", action="store_true", help="skip malformed lines (counted in the log)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("generate", help="replies to prompts, batched")
    p.add_argument("--checkpoint", help="run directory")
    p.add_argument("--exported", help="directory written by `nety-jax export`")
    p.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    p.add_argument("--file", help="a file with one prompt per line")
    p.add_argument("--num-samples", type=int, default=1, help="replies per prompt")
    _decode_args(p)
    p.set_defaults(fn=cmd_generate)

    p = sub.add_parser("chat", help="talk with a model at the terminal")
    p.add_argument("--checkpoint", required=True, help="run directory")
    _decode_args(p)
    p.set_defaults(fn=cmd_chat)

    p = sub.add_parser("export", help="serialize the jitted generate function (jax.export)")
    p.add_argument("--checkpoint", required=True, help="run directory")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--batch-size", type=int, default=0, help="fixed batch size (0: symbolic)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="decode.KEY=VALUE", help="decode settings baked into the artifact")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("import-torch", help="NETY PyTorch state dict -> run directory")
    p.add_argument("--state-dict", required=True, help="NETY's state_dict (.pt)")
    p.add_argument("--vocab", required=True, help="NETY's vocab.json")
    p.add_argument("--out", required=True, help="output run directory")
    _config_args(p)
    p.set_defaults(fn=cmd_import_torch)

    p = sub.add_parser("export-torch", help="parity-mode run directory -> NETY state dict")
    p.add_argument("--checkpoint", required=True, help="run directory")
    p.add_argument("--out", required=True, help="output .pt file")
    p.set_defaults(fn=cmd_export_torch)
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
    if getattr(args, "num_samples", 1) is not None and getattr(args, "num_samples", 1) < 1:
        print("nety-jax: error: --num-samples must be >= 1", file=sys.stderr)
        return EXIT_ERROR
    try:
        return args.fn(args)
    except NetyError as e:
        print(f"nety-jax: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("nety-jax: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
