"""README against the command's parser: every option of every subcommand is documented and has
help text, and every option a README command line gives exists (no subprocess: the parser is
built in-process)."""
import argparse
import re

from conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def options() -> tuple:
    """(the top-level options, {subcommand: its options}), --help left out."""
    from nety_jax.cli import build_parser
    parser = build_parser()
    top = {s for a in parser._actions for s in a.option_strings} - {"-h", "--help"}
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    return top, {name: {s for a in p._actions for s in a.option_strings} - {"-h", "--help"}
                 for name, p in subs.items()}


def undocumented(readme: str, subcommands: dict) -> list:
    return sorted(f"{name} {flag}" for name, flags in subcommands.items() for flag in flags
                  if not re.search(re.escape(flag) + r"(?![\w-])", readme))


def unknown(readme: str, top: set, subcommands: dict) -> list:
    """Options written after ``nety-jax SUBCOMMAND`` on one command line that it does not take."""
    text = readme.replace("\\\n", " ")
    found = []
    for m in re.finditer(r"nety-jax\s+(?:--[\w-]+(?:\s+[^\s-]\S*)?\s+)*([a-z][\w-]+)([^\n`|]*)", text):
        name, rest = m.groups()
        if name in subcommands:
            found += [f"{name} {f}" for f in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", rest)
                      if f not in subcommands[name] | top]
    return found


def test_every_option_is_documented():
    top, subcommands = options()
    assert undocumented(README, {"": top, **subcommands}) == []


def test_every_option_in_a_readme_command_exists():
    assert unknown(README, *options()) == []


def test_the_checks_find_a_missing_and_an_unknown_option():
    subcommands = {"train": {"--steps", "--seed"}, "serve": {"--port"}}
    readme = "nety-jax train --steps 3 --sede 1\n`nety-jax --no-compile-cache serve --port 0 --nme x`\n"
    assert undocumented(readme, subcommands) == ["train --seed"]
    assert unknown(readme, {"--no-compile-cache"}, subcommands) == ["train --sede", "serve --nme"]


def test_every_option_has_help_text():
    """What ``nety-jax SUBCOMMAND --help`` shows: no option without a line of its own."""
    from nety_jax.cli import build_parser
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    bare = [f"{name} {a.option_strings[0] if a.option_strings else a.dest}"
            for name, p in [("", parser), *subs.items()] for a in p._actions
            if not a.help and not isinstance(a, argparse._SubParsersAction)]
    assert bare == []
