"""An interactive chat loop for a person at a terminal."""
from __future__ import annotations

import sys

from nety_jax.errors import NetyError

HELP = """commands: /temp X  /topk K  /topp P  /beam N  /max N  /greedy  /seed S  /settings  /help  /quit
(an empty line does nothing; Ctrl-D or /quit leaves)"""

_SETTINGS = {"/temp": ("temperature", float), "/topk": ("top_k", int), "/topp": ("top_p", float),
             "/beam": ("beam_size", int), "/max": ("max_new_tokens", int), "/seed": ("seed", int)}


def chat(model, seed: int = 0, stdin=None, stdout=None, **decode_overrides) -> int:
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    settings = {k: v for k, v in decode_overrides.items() if v is not None}
    settings["seed"] = seed
    turn = 0
    print(f"NETY (step {model.step}). {HELP}", file=stdout)
    while True:
        try:
            stdout.write("vous> ")
            stdout.flush()
            line = stdin.readline()
        except KeyboardInterrupt:
            print("\nau revoir !", file=stdout)
            return 0
        if not line:  # Ctrl-D
            print("\nau revoir !", file=stdout)
            return 0
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            parts = line.split()
            cmd = parts[0]
            if cmd in ("/quit", "/exit"):
                print("au revoir !", file=stdout)
                return 0
            if cmd == "/help":
                print(HELP, file=stdout)
            elif cmd == "/settings":
                print(", ".join(f"{k}={v}" for k, v in sorted(settings.items())) or "defaults",
                      file=stdout)
            elif cmd == "/greedy":
                settings["temperature"] = 0.0
                print("temperature=0.0 (greedy)", file=stdout)
            elif cmd in _SETTINGS and len(parts) == 2:
                key, kind = _SETTINGS[cmd]
                try:
                    value = kind(parts[1])
                    trial = {k: v for k, v in settings.items() if k != "seed"} | {key: value}
                    if key != "seed":
                        model.decode_config(**trial)
                    settings[key] = value
                    print(f"{key}={value}", file=stdout)
                except (ValueError, NetyError) as e:
                    print(f"invalid value: {e}", file=stdout)
            else:
                print(f"unknown command {line!r}. {HELP}", file=stdout)
            continue
        options = {k: v for k, v in settings.items() if k != "seed"}
        try:
            reply = model.generate([line], seed=settings["seed"] + turn, **options)[0][0]
        except KeyboardInterrupt:
            print("\n(interrupted)", file=stdout)
            continue
        turn += 1
        print(f"nety> {reply}", file=stdout)
