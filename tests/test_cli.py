"""The `nety-jax` command end to end: generate, chat, export, and one-line errors."""
import io
import json
import subprocess
import sys

import jax
import pytest

from nety_jax.cli import main
from nety_jax.errors import NetyError
from nety_jax.serving.chat import chat
from nety_jax.serving.pretrained import load_pretrained
from conftest import ONE_LAYER, ROOT, TINY, run_main


def run_cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "nety_jax.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, input=stdin, timeout=300)


def test_generate_prompts_file_samples_and_beam(trained_run, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Bonjour !\n\nQuel temps fait-il à Lyon en hiver ?\n", encoding="utf-8")
    assert main(["generate", "--checkpoint", trained_run, "--file", str(prompts), "--prompt", "Salut",
                 "--num-samples", "2", "--temperature", "0.9", "--top-k", "20", "--top-p", "0.9",
                 "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("> Bonjour !") == 2 and out.count("> Salut") == 2
    assert main(["generate", "--checkpoint", trained_run, "--prompt", "Bonjour !", "--beam", "3"]) == 0
    assert capsys.readouterr().out.strip()
    assert main(["generate", "--checkpoint", trained_run, "--prompt", "Bonjour !", "--beam", "3",
                 "--num-samples", "2"]) == 0  # beam search's 2 best replies
    assert capsys.readouterr().out.count("> Bonjour !") == 2


def test_a_reader_that_goes_away_stops_the_command_quietly(trained_run):
    """`nety-jax info ... | head -1`: no BrokenPipeError traceback, the shell's exit code 141."""
    proc = subprocess.Popen([sys.executable, "-m", "nety_jax.cli", "info", "--checkpoint", trained_run], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the command writes anything
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141 and err == "", err


def test_chat_loop_handles_commands_empty_lines_and_eof(trained_run):
    model = load_pretrained(trained_run)
    stdin = io.StringIO("\n/temp 0\n/topk abc\n/seed -1\nBonjour !\n/settings\n/nope\n")
    stdout = io.StringIO()
    assert chat(model, stdin=stdin, stdout=stdout) == 0
    text = stdout.getvalue()
    assert "temperature=0.0" in text and "invalid value" in text and "nety> " in text
    assert "invalid value: seed=-1 must be between 0 and 2**63 - 1" in text and "seed=0" in text
    assert "unknown command" in text and "au revoir" in text


def test_chat_command_in_a_subprocess(trained_run):
    done = run_cli("chat", "--checkpoint", trained_run, "--temperature", "0", stdin="Salut !\n/quit\n")
    assert done.returncode == 0, done.stderr
    assert "nety> " in done.stdout and "au revoir" in done.stdout


def test_export_reloads_in_a_fresh_process_with_the_same_tokens(trained_run, tmp_path):
    out = tmp_path / "exported"
    assert main(["export", "--checkpoint", trained_run, "--out", str(out),
                 "--set", "decode.temperature=0"]) == 0
    info = json.loads((out / "export.json").read_text())
    assert info["jax_version"] == jax.__version__ and info["platforms"] == ["cpu", "cuda"]
    assert info["options"] == ["temperature", "top_k", "top_p", "max_new_tokens", "seed"]
    model = load_pretrained(trained_run)
    prompts = ["Bonjour !", "Combien font 2 plus 3 ?", "J'aime nager."]
    expected = model.generate(prompts, temperature=0.0)
    sampled = model.generate(prompts, temperature=0.9, top_k=10, seed=[3, 4, 5])
    script = (
        "import json, sys\n"
        "from nety_jax.serving.export import load_exported\n"
        f"m = load_exported({str(out)!r})\n"
        f"a = m.generate({prompts!r})\n"
        f"b = m.generate({prompts!r}, temperature=0.9, top_k=10, seed=[3, 4, 5])\n"
        "assert 'flax' not in sys.modules, 'model code loaded'\n"
        "print(json.dumps([a, b]))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [expected, sampled]
    # a different batch size reuses the same artifact (symbolic batch dimension), with runtime options
    cli = run_main("generate", "--exported", str(out), "--prompt", "Bonjour !", "--prompt", "Salut",
                  "--prompt", "Merci beaucoup !", "--prompt", "bonjour " * 60, "--temperature", "0.7",
                  "--max-new-tokens", "5")
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.count("> ") == 4
    assert "warning: prompt 4 was cut to 24 tokens" in cli.stderr  # as --checkpoint warns


@pytest.mark.parametrize("args, message", [
    (["generate", "--checkpoint", "{run}", "--prompt", "   "], "prompt 1 is empty"),
    (["generate", "--checkpoint", "{run}"], "no prompt: give --prompt TEXT or --file FILE"),
    (["generate", "--checkpoint", "/nonexistent/run", "--prompt", "x"], "/nonexistent/run: no such run directory"),
    (["generate", "--checkpoint", "{run}", "--prompt", "x", "--top-p", "1.5"], "decode.top_p=1.5 must be in (0, 1]"),
    (["generate", "--checkpoint", "{run}", "--prompt", "x", "--max-new-tokens", "5000"], "max_new_tokens=5000 is more than this model can produce"),
    (["generate", "--checkpoint", "{run}", "--prompt", "x", "--temperature", "nan"], "decode.temperature=nan must be a finite number"),
    (["info", "--config", TINY, "--set", "model.d_model=30"], "model.d_model=30 is not divisible by model.dec_heads=4"),
    (["train", "--config", TINY, "--workdir", "{tmp}/w", "--data", "{tmp}/missing.jsonl"], "missing.jsonl: data file not found"),
    (["train", "--config", TINY, "--workdir", "{tmp}/w", "--data", "{tmp}"], "is a directory, not a data file"),
    (["train", "--config", TINY, "--workdir", "{run}", "--set", "model.d_model=64"], "another config: model.d_model: checkpoint 32, requested 64"),
    (["export-torch", "--checkpoint", "{run}", "--out", "{tmp}/x.pt"], "only NETY-parity models can be exported"),
])
def test_errors_are_one_line_with_exit_code_2(trained_run, tmp_path, args, message):
    args = [a.replace("{run}", trained_run).replace("{tmp}", str(tmp_path)) for a in args]
    # in this process (the same main()); the first case in a fresh one: the real process's stderr
    done = (run_cli if args[-1] == "   " else run_main)(*args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize("content, message", [
    (b"", "no (input, target) pairs found"),
    (b'{"input": "salut", "target": "bonjour"}\n{"inp": "a", "target": "b"}\n', "bad.jsonl:2: missing key 'input'"),
    (b'{"input": "salut", "target": ["bonjour"]}\n', "bad.jsonl:1: 'target' must be a string, got list"),
    (b'{"input": "\xe9t\xe9", "target": "x"}\n', "bad.jsonl:1: invalid UTF-8"),
    (b'{"input": "", "target": "x"}\n', "bad.jsonl:1: 'input' is empty"),
])
def test_train_rejects_bad_data_files(tmp_path, content, message):
    data = tmp_path / "bad.jsonl"
    data.write_bytes(content)
    done = run_main("train", "--config", TINY, "--workdir", str(tmp_path / "w"), "--data", str(data))
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_skip_bad_trains_and_logs_the_count(tmp_path):
    lines = [json.dumps({"input": f"question {i} ?", "target": f"réponse {i} ."}) for i in range(40)]
    lines[3] = "{broken"
    lines[7] = json.dumps({"input": "x", "target": 5})
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    done = run_main("train", "--config", TINY, "--workdir", str(tmp_path / "w"), "--data", str(data),
                    "--skip-bad", "--steps", "12", "--no-progress", "--set", "data.vocab_size=60",
                    "--set", "train.batch_size=8", *[a for o in ONE_LAYER for a in ("--set", o)])  # depth: no matter
    assert done.returncode == 0, done.stderr
    assert "skipped 2 bad lines" in done.stdout and "pairs.jsonl:4: invalid JSON" in done.stdout


def test_a_fixed_batch_export_takes_any_number_of_prompts(trained_run, tmp_path):
    from nety_jax.serving.export import load_exported
    out = tmp_path / "fixed"
    assert main(["export", "--checkpoint", trained_run, "--out", str(out), "--batch-size", "2",
                 "--set", "decode.max_new_tokens=8"]) == 0
    prompts = ["Bonjour !", "J'aime nager.", "Il pleut encore."]  # more than its batch: two calls
    settings = dict(temperature=0.9, top_k=10, seed=4)
    expected = load_pretrained(trained_run).generate(prompts, max_new_tokens=8, **settings)
    assert load_exported(str(out)).generate(prompts, **settings) == expected


def test_beam_search_exports_too(trained_run, tmp_path):
    from nety_jax.serving.export import load_exported
    out = tmp_path / "beam"
    assert main(["export", "--checkpoint", trained_run, "--out", str(out), "--set", "decode.beam_size=2",
                 "--set", "decode.max_new_tokens=8"]) == 0
    prompts = ["Bonjour !", "J'aime nager.", "Il pleut encore."]
    expected = load_pretrained(trained_run).generate(prompts, beam_size=2, max_new_tokens=8)
    assert load_exported(str(out)).generate(prompts) == expected
    with pytest.raises(NetyError, match="runs beam search and returns one reply per prompt"):
        load_exported(str(out)).generate(prompts, num_samples=2)




def test_bench_script_runs_end_to_end_at_tiny_size(tmp_path):
    pytest.importorskip("torch")  # bench.py times NETY's PyTorch step beside ours (the bench extra)
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--tiny", "--repeats", "1",
                           "--skip-hf", "--no-doc", "--json", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads(out.read_text())
    for key in ("train_ratio_vs_torch", "train_mfu", "gen_b1_ratio_vs_nety", "gen_b1_fraction_of_bandwidth_bound",
                "gen_b64_mfu", "compile_train_s", "compile_generate_s", "recompiles_steady_state",
                "peak_rss_train_mb", "peak_rss_generate_mb", "gen_b1_ratio_vs_hf", "gen_b64_ratio_vs_hf",
                "gpt_train_ratio_vs_hf", "gpt_gen_b1_ratio_vs_hf", "gpt_gen_b64_ratio_vs_hf",
                "gpt_gen_b1_fraction_of_bandwidth_bound", "gpt_gen_b64_mfu", "gpt_train_mfu"):
        assert key in results, key
    assert results["gpt_train_mfu"] > 0 and results["gpt_gen_b64_mfu"] > 0
    # the steady state compiles nothing, counted by a listener that saw the warm-up's compilations
    assert results["recompiles_steady_state"] == 0 and results["recompiles"]["warm_up_compilations"] > 0
    assert "| train step, parity config" in done.stdout and "| generate 8 tokens, batch 1 |" in done.stdout
    assert "| GPT-2 124M train step (gpt2_124m)" in done.stdout and "| GPT generate 8 tokens, batch 1, greedy |" \
        in done.stdout
