"""QA round 4: an exported language model's prompt limit is named with its cause."""
from conftest import run_main


def test_an_export_names_why_it_cuts_a_prompt(trained_gpt, tmp_path):
    """An export keeps room for the longest reply it was compiled for (here 40 of a 64-position
    GPT), so it takes prompts of 25 tokens where the run takes 63 for a short reply; its warning
    said "the longest this model takes", which the run contradicts. It names the export's limit
    and how to lift it."""
    out = tmp_path / "export"
    assert run_main("export", "--checkpoint", trained_gpt[0], "--out", out,
                    "--set", "decode.max_new_tokens=40").returncode == 0
    prompt = "Le lundi, Marie va au marché avec sa mère. Le chat mange du poisson et le chien joue."
    exported = run_main("complete", "--exported", out, "--prompt", prompt, "--max-new-tokens", "4",
                        "--temperature", "0")
    assert exported.returncode == 0, exported.stderr
    assert "was cut to 25 tokens (the longest this export takes: model.max_len=64 less the 40-token replies " \
           "it was compiled for; export again with a smaller --set decode.max_new_tokens" in exported.stderr, \
        exported.stderr
    run = run_main("complete", "--checkpoint", trained_gpt[0], "--prompt", prompt, "--max-new-tokens", "4",
                   "--temperature", "0")
    assert run.returncode == 0 and "cut" not in run.stderr, run.stderr  # the model itself takes it whole
