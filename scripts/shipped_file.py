"""The command line of the scripts that write a shipped data file (build_corpus.py,
build_text.py): write it, or with --check only say whether the shipped one is current."""
from __future__ import annotations

import argparse
import os


def write_or_check(doc: str, out: str, text: str, what: str, unit: str, script: str) -> int:
    """Writes ``text`` to ``out``; ``--check`` compares instead (exit 1 when they differ)."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--check", action="store_true", help="fail if the shipped file differs")
    args = parser.parse_args()
    if args.check:
        with open(out, encoding="utf-8") as f:
            same = f.read() == text
        print(f"{what} up to date" if same else f"{what} differs: run scripts/{script}")
        return 0 if same else 1
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {text.count(chr(10))} {unit} to {os.path.normpath(out)}")
    return 0
