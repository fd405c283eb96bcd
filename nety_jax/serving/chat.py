"""An interactive chat loop for a person at a terminal.

Settings (/temp, /topk, /topp, /max, /seed) are runtime values of the compiled
generate function: changing them never recompiles (greedy turns, /temp 0, run their own program,
compiled once: it holds no sampler). Replies stream in chunks, so
Ctrl-C stops a long one within a few tokens. At a terminal, readline gives line
editing and history (kept in ~/.nety_jax_history).
"""
from __future__ import annotations

import os
import sys

from nety_jax.errors import NetyError

HELP = """commands: /temp X  /topk K  /topp P  /beam N  /max N  /greedy  /seed S  /settings  /help  /quit
(an empty line does nothing; Ctrl-D or /quit leaves; Ctrl-C stops a reply)"""

_SETTINGS = {"/temp": ("temperature", float), "/topk": ("top_k", int), "/topp": ("top_p", float),
             "/beam": ("beam_size", int), "/max": ("max_new_tokens", int), "/seed": ("seed", int)}
HISTORY = os.path.expanduser("~/.nety_jax_history")


def _line_reader(stdin, stdout):
    """A function returning the next line (None at end of input); readline at a terminal."""
    if stdin is sys.stdin and stdin.isatty():
        try:
            import readline
            try:
                readline.read_history_file(HISTORY)
            except OSError:
                pass
            import atexit
            atexit.register(lambda: _save_history(readline))
        except ImportError:
            pass
        try:
            sys.stdin.reconfigure(errors="surrogateescape")
        except (AttributeError, ValueError):
            pass

        def read():
            try:
                return input("vous> ")
            except EOFError:
                return None
        return read

    def read():
        stdout.write("vous> ")
        stdout.flush()
        line = stdin.readline()
        return line if line else None
    return read


def _save_history(readline) -> None:
    try:
        readline.write_history_file(HISTORY)
    except OSError:
        pass


def _command(line: str, settings: dict, model, stdout) -> bool:
    """Handles a /command; returns False to leave the chat."""
    parts = line.split()
    cmd = parts[0]
    say = lambda text: print(text, file=stdout)
    if cmd in ("/quit", "/exit"):
        return False
    if cmd == "/help":
        say(HELP)
    elif cmd == "/settings":
        say(", ".join(f"{k}={v}" for k, v in sorted(settings.items())))
    elif cmd == "/greedy":
        settings["temperature"] = 0.0
        say("temperature=0.0 (greedy)")
    elif cmd in _SETTINGS and len(parts) == 2:
        key, kind = _SETTINGS[cmd]
        try:
            value = kind(parts[1])
            from nety_jax.serving.settings import resolve, seeds_per_row
            if key == "seed":  # validated the same way a generate call is
                seeds_per_row(value, 1, 1)
            else:
                trial = {k: v for k, v in settings.items() if k != "seed"} | {key: value}
                resolve(model.config.decode, model.model.prompts, 1, trial)
            settings[key] = value
            say(f"{key}={value}")
        except (ValueError, NetyError) as e:
            say(f"invalid value: {e}")
    else:
        say(f"unknown command {line!r}. {HELP}")
    return True


def _reply(model, history: list, settings: dict, turn: int, stdout) -> str:
    options = {k: v for k, v in settings.items() if k != "seed"}
    text = ""
    prompt = model.chat_prompt(history, settings["max_new_tokens"])
    for tokens in model.stream([prompt], seed=settings["seed"] + turn, **options):
        text = model.tokenizer.decode(tokens[0].tolist())
    return text


def chat(model, seed: int = 0, stdin=None, stdout=None, **decode_overrides) -> int:
    """``nety-jax chat``: a conversation with ``model`` (a ``Pretrained``) on ``stdin``/``stdout``
    until end of input or Ctrl-C; ``decode_overrides`` (temperature, top_k, top_p,
    max_new_tokens) replace the run's ``decode`` settings. Returns the exit status, 0."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    settings = {"temperature": model.config.decode.temperature, "top_k": model.config.decode.top_k,
                "top_p": model.config.decode.top_p, "max_new_tokens": model.config.decode.max_new_tokens}
    settings |= {k: v for k, v in decode_overrides.items() if v is not None}
    from nety_jax.serving.settings import seeds_per_row
    settings["seed"] = seeds_per_row(seed, 1, 1)
    read = _line_reader(stdin, stdout)
    turn, history = 0, []
    print(f"NETY (step {model.step}). {HELP}", file=stdout)
    while True:
        try:
            line = read()
        except KeyboardInterrupt:
            line = None
        if line is None:
            print("\nau revoir !", file=stdout)
            return 0
        if any("\udc80" <= c <= "\udcff" for c in line):
            print("(that line is not valid UTF-8; type it again)", file=stdout)
            continue
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            if not _command(line, settings, model, stdout):
                print("au revoir !", file=stdout)
                return 0
            continue
        try:
            reply = _reply(model, history + [("user", line)], settings, turn, stdout)
        except KeyboardInterrupt:
            print("\n(interrupted)", file=stdout)
            continue
        except NetyError as e:
            print(f"(error: {e})", file=stdout)
            continue
        turn += 1
        history += [("user", line), ("assistant", reply)]
        print(f"nety> {reply or '(empty reply)'}", file=stdout)
