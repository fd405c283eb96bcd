"""Hostile prompts and settings through generate, chat and the exported artifact: a reply or a
clear one-line error, never a traceback."""
import io
import subprocess
import sys

import numpy as np
import pytest

from nety_jax.serving.chat import chat
from nety_jax.serving.pretrained import load_pretrained
from conftest import ROOT, run_main

HOSTILE = ["Bonjour \x00\x07\x1b[31m !", "你好，世界 🙂 ∑∫", "\u200b\u202eBonjour", "a" * 100_000, "Salut\n\nça va ?"]


def run_cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "nety_jax.cli", *args], cwd=ROOT, capture_output=True,
                          input=stdin, timeout=300)


def test_hostile_prompts_get_replies_and_long_ones_a_warning(trained_run, tmp_path):
    from nety_jax.cli import main
    warnings = []
    model = load_pretrained(trained_run, warn=warnings.append)
    replies = model.generate(HOSTILE, temperature=0.0)
    assert len(replies) == len(HOSTILE) and all(isinstance(r[0], str) for r in replies)
    assert warnings == [f"warning: prompt 4 was cut to {model.config.data.max_src_len} tokens (the longest "
                        "this model takes)"]
    out = tmp_path / "export"
    assert main(["export", "--checkpoint", trained_run, "--out", str(out)]) == 0
    from nety_jax.serving.export import load_exported
    exported = load_exported(str(out))
    assert exported.generate(HOSTILE, temperature=0.0) == replies
    # a per-text setting as an array, with samples: each text's value for its rows, as load_pretrained's
    assert exported.generate(HOSTILE[:2], num_samples=2, temperature=np.zeros(2)) == [r * 2 for r in replies[:2]]


@pytest.mark.parametrize("args, message", [
    (["--prompt", ""], "prompt 1 is empty"),
    (["--prompt", " \t "], "prompt 1 is empty"),
    (["--prompt", b"caf\xe9".decode("utf-8", "surrogateescape")], "--prompt: not valid UTF-8"),
    (["--file", "{tmp}/latin1.txt"], "latin1.txt:2: invalid UTF-8"),
    (["--file", "{tmp}"], "is a directory"),
    (["--prompt", "x", "--temperature", "inf"], "decode.temperature=inf must be a finite number"),
    (["--prompt", "x", "--length-penalty", "nan", "--beam", "2"], "decode.length_penalty=nan must be a finite number"),
    (["--prompt", "x", "--top-k", "-3"], "decode.top_k=-3 must be >= 0"),
    (["--prompt", "x", "--num-samples", "0"], "--num-samples=0 must be >= 1"),
    (["--prompt", "x", "--seed", str(2 ** 64)], f"seed={2 ** 64} must be between 0 and 2**63 - 1"),
    (["--prompt", "x", "--beam", "2", "--num-samples", "3"], "num_samples=3 is more than beam_size=2"),
])
def test_bad_generate_input_is_one_line(trained_run, tmp_path, args, message):
    (tmp_path / "latin1.txt").write_bytes(b"Bonjour\ncaf\xe9 cr\xe8me\n")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    # in this process (the same main()); the first case in a fresh one: the real process's stderr
    if args == ["--prompt", ""]:
        done = run_cli("generate", "--checkpoint", trained_run, *args)
        err = done.stderr.decode()
    else:
        done = run_main("generate", "--checkpoint", trained_run, *args)
        err = done.stderr
    assert done.returncode == 2 and message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_chat_survives_invalid_utf8_and_control_characters(trained_run):
    stdin = b"caf\xe9\n\x1b[A\x1b[B\nBonjour !\n" + "a".encode() * 5000 + b"\n/quit\n"
    done = run_cli("chat", "--checkpoint", trained_run, "--temperature", "0", stdin=stdin)
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()
    assert out.count("nety> ") == 3 and "au revoir" in out and "Traceback" not in done.stderr.decode()


class _SlowModel:
    """Streams forever until interrupted: Ctrl-C must stop the reply, not the chat."""

    class config:
        class decode:
            temperature, top_k, top_p, max_new_tokens = 0.8, 50, 0.9, 50
    step = 0

    def __init__(self):
        self.calls = 0

    def chat_prompt(self, messages, max_new_tokens=None):
        return messages[-1][1]

    def stream(self, texts, seed=0, **settings):
        self.calls += 1
        yield np.asarray([[5]])
        if self.calls == 1:
            raise KeyboardInterrupt
        yield np.asarray([[6]])

    class tokenizer:
        @staticmethod
        def decode(ids):
            return " ".join(map(str, ids))


def test_ctrl_c_stops_a_reply_and_the_chat_goes_on():
    out = io.StringIO()
    assert chat(_SlowModel(), stdin=io.StringIO("un\ndeux\n"), stdout=out) == 0
    text = out.getvalue()
    assert "(interrupted)" in text and "nety> 6" in text and "au revoir" in text
