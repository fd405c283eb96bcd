"""HuggingFace GPT-2 in and out (import-hf, export-hf, the hf tokenizer) and train --init-from.

The HF side is built here with transformers and tokenizers (no downloads): tiny random
GPT2LMHeadModels saved with save_pretrained, a byte-level BPE trained with tokenizers.
"""
import io
import json
import os
import shutil
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from conftest import GPT_TINY, QUIET  # noqa: E402

TEXT = ["le chat mange la souris.", "Le chien dort dans la maison, près du feu.",
        "la souris mange le fromage; 12 fromages coûtent 3,50 € !", "Où est le café ? Ça va très bien."]


def bpe(vocab_size=300, specials=("<|endoftext|>",)):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXT * 20, trainer)
    return tok


def make_hf_dir(path, tied=True, **cfg):
    """A random GPT2LMHeadModel (q/k/v biases: GPT-2 always has them) and its tokenizer, saved
    as save_pretrained writes them. <|endoftext|> is the last id, as GPT-2's, so the id map is
    not the identity; init range 0.3: logits far enough apart that greedy has no near-ties."""
    tok = bpe(specials=())
    tok.add_special_tokens(["<|endoftext|>"])
    eos = tok.token_to_id("<|endoftext|>")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=64, n_embd=32,
                                     n_layer=2, n_head=4, bos_token_id=eos, eos_token_id=eos,
                                     tie_word_embeddings=tied, initializer_range=0.3, **cfg)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(str(path))
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                         bos_token="<|endoftext|>").save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {name: make_hf_dir(root / name, tied=(name == "tied")) for name in ("tied", "untied")}


@pytest.fixture(scope="module")
def imported(hf_dirs, tmp_path_factory):
    from nety_jax.models.gpt.hf_io import import_hf
    out = str(tmp_path_factory.mktemp("imported") / "run")
    return import_hf(hf_dirs["tied"], out)


def hf_logits(model_dir, ids):
    model = transformers.GPT2LMHeadModel.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.float().numpy()


def our_logits(cfg, variables, ids):
    from nety_jax.models import get_model
    return np.asarray(get_model(cfg.model).logits(variables, {"tokens": np.asarray(ids, np.int32)})[0])


def cli(*argv):
    from nety_jax.cli import main
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


# -- import ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tied", "untied"])
def test_import_gives_transformers_logits(hf_dirs, name):
    from nety_jax.models.gpt.hf_io import load_hf
    cfg, tok, variables = load_hf(hf_dirs[name])
    assert cfg.model.qkv_bias and cfg.model.tie_output == (name == "tied")
    assert tok.vocab_size == tok.model_vocab + 3 and tok.blocked_ids == (0, 1, 3)  # GPT-2 has eos only
    hf_ids = np.random.default_rng(1).integers(0, tok.model_vocab, (3, 17))
    ref = hf_logits(hf_dirs[name], hf_ids)
    ours = our_logits(cfg, variables, tok.to_ours[hf_ids])
    assert np.abs(ours[..., tok.to_ours] - ref).max() <= 1e-5 * ref.std()
    assert (ours[..., list(tok.blocked_ids)] == -1e9).all()


def test_import_reads_every_weight_format(hf_dirs, tmp_path):
    """pytorch_model.bin (weights only), sharded safetensors and bfloat16 files give the same
    float32 parameters (bfloat16: its values, widened), and vocab.json + merges.txt the same
    tokenizer as tokenizer.json."""
    from nety_jax.models.gpt.hf_io import load_hf
    base_cfg, base_tok, base = load_hf(hf_dirs["untied"])
    model = transformers.GPT2LMHeadModel.from_pretrained(hf_dirs["untied"])
    variants = {}
    for name in ("bin", "sharded", "bf16"):
        d = tmp_path / name
        shutil.copytree(hf_dirs["untied"], d)
        os.remove(d / "model.safetensors")
        variants[name] = d
    torch.save(model.state_dict(), variants["bin"] / "pytorch_model.bin")
    model.save_pretrained(str(variants["sharded"]), max_shard_size="20KB")
    assert (variants["sharded"] / "model.safetensors.index.json").exists()
    model.to(torch.bfloat16).save_pretrained(str(variants["bf16"]))
    for name, d in variants.items():
        _, _, variables = load_hf(str(d))
        for a, b in zip(jax_leaves(base), jax_leaves(variables)):
            widened = a.astype("bfloat16").astype(np.float32) if name == "bf16" else a
            assert b.dtype == np.float32 and np.array_equal(widened, b), name
    slow = tmp_path / "slow"
    shutil.copytree(hf_dirs["untied"], slow)
    base_tok.tok.model.save(str(slow))  # vocab.json + merges.txt
    os.remove(slow / "tokenizer.json")
    _, tok, _ = load_hf(str(slow))
    for text in TEXT:
        assert tok.encode(text) == base_tok.encode(text) and tok.decode(tok.encode(text)) == text


def jax_leaves(tree):
    import jax
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_greedy_complete_equals_hf_generate(hf_dirs, imported):
    """Prompts of different lengths in ONE batch of ours; HF generate on each alone (no padding)."""
    from nety_jax.serving.pretrained import load_pretrained
    model = load_pretrained(imported)
    tok = model.tokenizer
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_dirs["tied"]).eval()
    prompts = ["le", "Le chien dort dans la", "la souris mange le fromage; 12"]
    out = model.generate_ids(prompts, temperature=0.0, max_new_tokens=12)
    texts = model.generate(prompts, temperature=0.0, max_new_tokens=12, with_prompt=True)
    for i, prompt in enumerate(prompts):
        ids = tok.tok.encode(prompt).ids
        with torch.no_grad():
            ref = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                              do_sample=False, max_new_tokens=12, pad_token_id=tok.specials["eos"])[0, len(ids):]
        ref = ref.tolist()
        ours = tok.to_hf[out["tokens"][i][: out["lengths"][i]]].tolist()
        if tok.specials["eos"] in ref:  # ours stops at <eos> and does not return it
            ref = ref[: ref.index(tok.specials["eos"])]
        assert ours == ref, prompt
        assert texts[i][0] == tok.tok.decode(ids + ref, skip_special_tokens=False)


def test_imported_run_works_with_every_command(imported, tmp_path, monkeypatch):
    for argv in (["complete", "--checkpoint", imported, "--prompt", "le chat", "--max-new-tokens", "4"],
                 ["generate", "--checkpoint", imported, "--prompt", "le chat", "--max-new-tokens", "4"],
                 ["predict-next", "--checkpoint", imported, "le chat mange la"],
                 ["export", "--checkpoint", imported, "--out", str(tmp_path / "exported")],
                 ["quantize", "--checkpoint", imported, "--out", str(tmp_path / "int8")],
                 ["complete", "--exported", str(tmp_path / "exported"), "--prompt", "le", "--max-new-tokens", "3"],
                 ["complete", "--checkpoint", str(tmp_path / "int8"), "--prompt", "le", "--max-new-tokens", "3"]):
        code, out, err = cli(*argv)
        assert code == 0, (argv, err)
        assert out.strip(), argv
    monkeypatch.setattr("sys.stdin", io.StringIO("le chat\n/quit\n"))
    code, out, err = cli("chat", "--checkpoint", imported, "--max-new-tokens", "3")
    assert code == 0 and "nety>" in out, err


def test_imported_run_serves_openai_completions(imported):
    from fastapi.testclient import TestClient
    from nety_jax.serving.pretrained import load_pretrained
    from nety_jax.serving.engine import PretrainedBackend
    from nety_jax.serving.server import create_app
    model = load_pretrained(imported)
    with TestClient(create_app(PretrainedBackend(model, None), "gpt2")) as client:
        reply = client.post("/v1/completions", json={"model": "gpt2", "prompt": "le chat", "max_tokens": 5,
                                                      "temperature": 0})
    assert reply.status_code == 200, reply.text
    whole = model.generate(["le chat"], temperature=0.0, max_new_tokens=5, with_prompt=True)[0][0]
    assert "le chat" + reply.json()["choices"][0]["text"] == whole  # the text continues the prompt, as OpenAI's


# -- export ----------------------------------------------------------------------------------------
def test_import_export_import_is_bit_identical(hf_dirs, imported, tmp_path):
    from nety_jax.models.gpt.hf_io import load_hf
    code, _, err = cli("export-hf", "--checkpoint", imported, "--out", str(tmp_path / "hf"))
    assert code == 0, err
    cfg, tok, variables = load_hf(hf_dirs["tied"])
    cfg2, tok2, variables2 = load_hf(str(tmp_path / "hf"))
    assert cfg2.model == cfg.model and tok2.specials == tok.specials
    assert all(np.array_equal(a, b) for a, b in zip(jax_leaves(variables), jax_leaves(variables2)))
    assert json.loads(tok2.tok.to_str()) == json.loads(tok.tok.to_str())
    ids = np.random.default_rng(2).integers(0, tok.model_vocab, (2, 9))
    assert np.array_equal(hf_logits(str(tmp_path / "hf"), ids), hf_logits(hf_dirs["tied"], ids))


@pytest.fixture(scope="module")
def trained_hf_gpt(tmp_path_factory):
    """A tiny GPT trained here with data.tokenizer: hf (a byte-level BPE trained on the text)."""
    from nety_jax.config import load_config
    from nety_jax.training.loop import train
    workdir = str(tmp_path_factory.mktemp("hfgpt") / "run")
    cfg = load_config(GPT_TINY, ["train.steps=6", "train.eval_every=6", "train.checkpoint_every=6",
                                 "data.tokenizer=hf", "data.vocab_size=300", "model.tie_output=true",
                                 "train.warmup_steps=2"])
    train(cfg, workdir, **QUIET)
    return workdir


def test_export_of_a_trained_model_loads_in_transformers(trained_hf_gpt, tmp_path):
    from nety_jax.serving.pretrained import load_pretrained
    out = str(tmp_path / "hf")
    code, _, err = cli("export-hf", "--checkpoint", trained_hf_gpt, "--out", out)
    assert code == 0, err
    ours = load_pretrained(trained_hf_gpt)
    auto = transformers.AutoTokenizer.from_pretrained(out)
    for text in TEXT:
        assert auto.encode(text) == ours.tokenizer.encode(text)  # identity id map: specials at 0-3
        assert auto.decode(auto.encode(text)) == ours.tokenizer.decode(ours.tokenizer.encode(text)) == text
    ids = np.asarray([ours.tokenizer.encode(TEXT[1])[:20]])
    ref = hf_logits(out, ids)
    mine = our_logits(ours.config, ours.variables, ids)
    assert np.abs(mine - ref).max() <= 1e-5 * ref.std()


def test_tokenizers_tokenizer_encodes_as_autotokenizer(hf_dirs, imported):
    from nety_jax.data.tokenizer import load_tokenizer
    ours = load_tokenizer(imported)
    auto = transformers.AutoTokenizer.from_pretrained(hf_dirs["tied"])
    for text in TEXT + ["  deux  espaces\tet\nlignes", "emoji 🙂 et 漢字", ""]:
        ids = auto.encode(text)
        assert ours.encode(text) == ours.to_ours[ids].tolist()
        assert ours.decode(ours.encode(text)) == auto.decode(ids) == text


# -- fine-tuning -----------------------------------------------------------------------------------
def _first_batch_losses(cfg, source, text, tmp_path):
    """The mean loss on the first training batch of ``cfg`` over ``text``, as a training step
    computes it (train mode: the hybrid's BatchNorm normalises with the batch's statistics;
    dropout is 0), of the source's variables and of freshly initialised ones."""
    import jax
    from nety_jax.training.setup import prepare
    run = prepare(cfg, str(tmp_path / "probe"), text, False, lambda *_: None, source)
    batch = next(run.iterator)
    run.manager.close()
    # one program for both (op by op, the loss compiled each of its operations on its own)
    loss_sums = jax.jit(lambda variables: run.model.loss_sums(variables, batch, train=True,
                                                              rng=jax.random.PRNGKey(0))[0])
    losses = []
    for variables in (source.variables, run.model.init(jax.random.PRNGKey(0))):
        sums = loss_sums(variables)
        losses.append(float(sums["nll_sum"]) / float(sums["tokens"]))
    return losses


@pytest.mark.parametrize("kind", ["hf", "hybrid"])
def test_init_from_continues_from_the_source_loss(kind, hf_dirs, trained_run, tmp_path):
    from nety_jax.training.init_from import finetune_config, load_source
    from nety_jax.training.loop import train
    text = tmp_path / "text.txt"
    text.write_text("\n".join(TEXT * 30), encoding="utf-8")
    source_dir, data = (hf_dirs["untied"], [str(text)]) if kind == "hf" else (trained_run, None)
    source = load_source(source_dir)
    sets = ["train.steps=1", "train.log_every=1", "train.batch_size=4", "model.dropout=0.0", "train.warmup_steps=0",
            "model.attention_dropout=0.0", "train.eval_every=1", "train.checkpoint_every=1",
            "train.bleu_samples=0"]  # the evaluation, not its sampled replies: nothing here reads them
    sets += ["data.seq_len=16"] if kind == "hf" else []
    cfg = finetune_config(source, None, sets)
    assert cfg.model.replace(dropout=0.0, attention_dropout=0.0) == \
        source.cfg.model.replace(dropout=0.0, attention_dropout=0.0)
    expected, fresh = _first_batch_losses(cfg, source, data, tmp_path)
    train(cfg, str(tmp_path / "ft"), data, init_from=source, **QUIET)
    first = json.loads((tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1 and abs(first["nll"] - expected) < 1e-4 * expected
    assert abs(fresh - expected) > 0.05  # random weights start elsewhere: the check can fail


def test_init_from_refuses_a_contradicting_config(hf_dirs, tmp_path):
    code, _, err = cli("train", "--init-from", hf_dirs["tied"], "--config", GPT_TINY, "--workdir",
                       str(tmp_path / "ft"), "--no-progress")
    assert code == 2 and "model.d_model=64 contradicts --init-from" in err and err.count("\n") == 1
    code, _, err = cli("train", "--init-from", hf_dirs["tied"], "--set", "data.tokenizer=word",
                       "--workdir", str(tmp_path / "ft"))
    assert code == 2 and "data.tokenizer='word' contradicts" in err
    assert not (tmp_path / "ft").exists()


# -- bad input -------------------------------------------------------------------------------------
def _bad_dirs(base, root):
    def copy(name):
        d = root / name
        shutil.copytree(base, d)
        return d
    d = copy("no_config")
    os.remove(d / "config.json")
    yield "no_config", d, "config.json: not found"
    d = copy("no_weights")
    os.remove(d / "model.safetensors")
    yield "no_weights", d, "no weights"
    d = copy("llama")
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type="llama", architectures=["LlamaForCausalLM"])
    (d / "config.json").write_text(json.dumps(cfg))
    yield "llama", d, "model_type 'llama' (LlamaForCausalLM) is not GPT-2"
    d = copy("shapes")
    cfg = json.loads((d / "config.json").read_text())
    cfg["n_embd"] = 48
    (d / "config.json").write_text(json.dumps(cfg))
    yield "shapes", d, "has shape"
    d = copy("truncated")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    yield "truncated", d, "not a complete safetensors file"
    d = copy("pickle")
    os.remove(d / "model.safetensors")
    torch.save({"weights": transformers.GPT2Config()}, d / "pytorch_model.bin")
    yield "pickle", d, "not weights only"


def test_bad_input_is_one_line_and_writes_nothing(hf_dirs, tmp_path):
    seen = []
    for name, d, message in _bad_dirs(hf_dirs["tied"], tmp_path):
        out = tmp_path / f"out_{name}"
        code, _, err = cli("import-hf", "--model", str(d), "--out", str(out))
        assert code == 2 and message in err and err.count("\n") == 1 and err.startswith("nety-jax: error:"), \
            (name, err)
        assert not out.exists(), name
        seen.append(name)
    assert len(seen) == 6
    existing = tmp_path / "exists"  # a directory of someone else's files (the writers' guard)
    existing.mkdir()
    (existing / "notes.txt").write_text("mine\n")
    code, _, err = cli("import-hf", "--model", hf_dirs["tied"], "--out", str(existing))
    assert code == 2 and "nety-jax did not write" in err and os.listdir(existing) == ["notes.txt"]
    code, _, err = cli("export-hf", "--checkpoint", hf_dirs["tied"], "--out", str(tmp_path / "x"))
    assert code == 2 and err.count("\n") == 1 and not (tmp_path / "x").exists()
