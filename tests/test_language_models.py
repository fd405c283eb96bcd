"""The decoder-only GPT and the recurrent LM on the shared machinery."""
import gzip
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nety_jax.cli import main
from nety_jax.config import load_config
from nety_jax.decoding import LoopSpec, SamplingParams, generate_jit
from nety_jax.layers import RecurrentStack
from nety_jax.models import get_model
from nety_jax.serving.pretrained import load_pretrained
from nety_jax.training.metrics import read_metrics
from conftest import CONFIGS, GPT_TINY, RNN_LM, ROOT, run_main

PROMPTS = [[5, 9, 12, 7, 30], [8, 3], [4, 5, 6, 7, 8, 9, 10, 11, 13], [21]]


def _info(capsys, *sets):
    assert main(["info", "--config", str(CONFIGS / "gpt2_124m.yaml"), *sum((["--set", s] for s in sets), [])]) == 0
    return capsys.readouterr().out


def test_gpt2_124m_parameter_counts(capsys):
    assert "163,009,536" in _info(capsys)
    assert "124,412,160" in _info(capsys, "model.tie_output=true")


def _batch(prompts):
    width = max(map(len, prompts))
    tokens = np.zeros((len(prompts), width), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = p
    return jnp.asarray(tokens), jnp.asarray([len(p) for p in prompts], jnp.int32)


def _recompute_greedy(model, variables, prompt, n):
    """The reference: the whole prefix through the teacher-forced network at every step. The
    prefix sits in one width (padded after it), so one program serves every step and prompt
    instead of one compile per length; the network is causal, so the next token is read at the
    prefix's last position."""
    logits_fn = jax.jit(lambda t: model.logits(variables, {"tokens": t})[0])
    seq = np.zeros((1, max(map(len, PROMPTS)) + n), np.int32)
    seq[0, :len(prompt)] = prompt
    for i in range(len(prompt), len(prompt) + n):
        seq[0, i] = np.asarray(logits_fn(jnp.asarray(seq)))[0, i - 1].argmax()
    return seq[0, len(prompt):len(prompt) + n].tolist()


LM_CONFIGS = {"gpt": (GPT_TINY, ["model.vocab_size=50"]),
              "rnn_lm": (RNN_LM, ["model.vocab_size=50", "model.layers=2", "model.cell=gru"])}


@pytest.mark.parametrize("arch", list(LM_CONFIGS))
def test_cached_generation_equals_recompute_for_prompts_of_different_lengths(arch):
    path, sets = LM_CONFIGS[arch]
    model = get_model(load_config(path, sets).model)
    variables = model.init(jax.random.PRNGKey(3))
    variables = jax.tree_util.tree_map(lambda x: x * 4.0, variables)  # sharper random logits
    n = 8
    tokens, lengths = _batch(PROMPTS)
    params = SamplingParams.create(len(PROMPTS), temperature=0.0)
    out = generate_jit(variables, tokens, lengths, params, model=model,
                       spec=LoopSpec(max_new_tokens=n, ignore_eos=True))
    batch = np.asarray(out["tokens"])
    rows = [_recompute_greedy(model, variables, p, n) for p in PROMPTS]
    for i, p in enumerate(PROMPTS):
        alone = generate_jit(variables, *_batch([p]), SamplingParams.create(1, temperature=0.0),
                             model=model, spec=LoopSpec(max_new_tokens=n, ignore_eos=True))
        assert batch[i].tolist() == rows[i] == np.asarray(alone["tokens"])[0].tolist(), i
    assert len({tuple(r) for r in rows}) > 1


def test_rnn_stack_equals_flax_rnn_and_freezes_carries_after_each_row():
    b, t, d, h = 3, 7, 6, 5
    lengths = jnp.asarray([7, 4, 1])
    x = jax.random.normal(jax.random.PRNGKey(0), (b, t, d))
    ours = RecurrentStack("lstm", h, 1, bidirectional=False)
    params = nn.unbox(ours.init(jax.random.PRNGKey(1), x)["params"])
    live = jnp.arange(t)[None, :] < lengths[:, None]
    out, _, carries = ours.apply({"params": params}, x, live=live)
    p = params["l0"]
    wi, bi = jnp.split(p["input"]["kernel"], 4, -1), jnp.split(p["input"]["bias"], 4, -1)
    wh, bh = jnp.split(p["recurrent"]["kernel"][0], 4, -1), jnp.split(p["recurrent"]["bias"][0], 4, -1)
    ref_params = {}
    for g, a, bb, c, e in zip("ifgo", wi, wh, bi, bh):
        ref_params[f"i{g}"] = {"kernel": a}
        ref_params[f"h{g}"] = {"kernel": bb, "bias": c + e}
    (c_ref, h_ref), ys = nn.RNN(nn.LSTMCell(h), return_carry=True).apply(
        {"params": {"cell": ref_params}}, x, seq_lengths=lengths)
    real = np.asarray(live)
    assert np.abs(np.asarray(out) - np.asarray(ys))[real].max() < 1e-5
    assert np.abs(np.asarray(carries[0][0][0]) - np.asarray(h_ref)).max() < 1e-5
    assert np.abs(np.asarray(carries[0][1][0]) - np.asarray(c_ref)).max() < 1e-5


@pytest.mark.parametrize("fixture, phrase, word", [
    ("trained_gpt", "Le matin, le chat mange du", "poisson"),
    ("trained_rnn_lm", "Le matin, le chat mange du", "poisson"),
])
def test_language_models_learn_the_shipped_text_and_predict_the_next_word(request, fixture, phrase, word):
    workdir, summary = request.getfixturevalue(fixture)
    val = [r["loss"] for r in read_metrics(workdir) if r["split"] == "val"]
    assert len(val) >= 2 and val[-1] < val[0] - 0.2, val
    assert summary["val"]["loss"] < 1.5
    with open(ROOT / "nety_jax" / "resources" / "textes_fr.txt", encoding="utf-8") as f:
        assert f"{phrase} {word}" in f.read()
    best = load_pretrained(workdir).predict_next(phrase, top_k=3)
    assert best[0][0] == word, best
    assert 0.0 < best[0][1] <= 1.0 and [p for _, p in best] == sorted((p for _, p in best), reverse=True)


def test_complete_and_predict_next_commands(trained_rnn_lm, trained_gpt, capsys):
    workdir, _ = trained_rnn_lm
    assert main(["complete", "--checkpoint", workdir, "--prompt", "Le lundi, Marie", "--prompt",
                 "Le chat", "--temperature", "0", "--max-new-tokens", "6"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("Le lundi, Marie ") and lines[1].startswith("Le chat ")
    assert main(["complete", "--checkpoint", trained_gpt[0], "--prompt", "Le chat", "--prompt", "Hier, Léa",
                 "--beam", "3", "--num-samples", "2", "--max-new-tokens", "4"]) == 0  # 2 best beams each
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(" ")[0] for line in lines] == ["Le", "Le", "Hier,", "Hier,"], lines
    assert lines[0] != lines[1] and lines[2] != lines[3] and lines[2].startswith("Hier, Léa")
    assert main(["predict-next", "--checkpoint", trained_gpt[0], "le chat mange du", "--top-k", "2"]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()]
    assert len(rows) == 2 and all(0 < float(p) <= 1 for _, p in rows)
    assert main(["predict-next", "--checkpoint", trained_gpt[0], "  "]) == 2
    assert "nety-jax: error: text is empty" in capsys.readouterr().err
    assert main(["export-torch", "--checkpoint", trained_gpt[0], "--out", "never.pt"]) == 2
    err = capsys.readouterr().err  # its architecture, not the hybrid's fields it does not have
    assert "this one has model.arch='gpt' (NETY: 'hybrid')\n" in err and "model.cell" not in err, err


@pytest.mark.parametrize("fixture", ["trained_gpt", "trained_rnn_lm"])
def test_export_and_load_language_models(request, fixture, tmp_path):
    from nety_jax.serving.export import load_exported
    workdir, _ = request.getfixturevalue(fixture)
    out = tmp_path / "export"
    assert main(["export", "--checkpoint", workdir, "--out", str(out)]) == 0
    prompts = ["Le chat mange", "Pour préparer une omelette, il faut"]
    expected = load_pretrained(workdir).generate(prompts, temperature=0.0, max_new_tokens=6)
    assert load_exported(str(out)).generate(prompts, temperature=0.0, max_new_tokens=6) == expected
    info = json.loads((out / "export.json").read_text())
    assert info["signature"]["task"] == "lm" and info["signature"]["prompt"] == "prefix"


def test_text_from_several_files_gzip_and_bom(tmp_path):
    from nety_jax.data.text import read_text
    a = tmp_path / "a.txt"
    a.write_bytes("\ufeffpremière ligne\r\n\r\ndeuxième ligne\n".encode("utf-8"))
    b = tmp_path / "b.txt.gz"
    with gzip.open(b, "wt", encoding="utf-8") as f:
        f.write("troisième ligne\n")
    assert read_text([str(a), str(b)]).lines == ["première ligne", "deuxième ligne", "troisième ligne"]


def test_train_refuses_the_wrong_kind_of_data(tmp_path):
    done = run_main("train", "--config", GPT_TINY, "--data", "pairs.jsonl", "--workdir", str(tmp_path / "w"))
    assert done.returncode == 2 and "language model: use --text" in done.stderr, done.stderr
    assert main(["predict-next", "--checkpoint", str(tmp_path / "none"), "x"]) == 2
