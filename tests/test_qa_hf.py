"""QA: HuggingFace directories that lie (a shard index disagreeing with its shards, NaN or integer
weights, config.json fields of the wrong type, a malformed tokenizer_config.json) and
`train --init-from` into a run that would ignore it."""
import json
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from conftest import run_main  # noqa: E402
from test_hf import make_hf_dir  # noqa: E402


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return make_hf_dir(tmp_path_factory.mktemp("qa_hf") / "gpt2", tied=True)


def _copy(hf_dir, root, name):
    d = root / name
    shutil.copytree(hf_dir, d)
    return d


def _sharded(hf_dir, root, name):
    """The model saved as 4+ safetensors shards with their index."""
    import transformers
    d = _copy(hf_dir, root, name)
    os.remove(d / "model.safetensors")
    transformers.GPT2LMHeadModel.from_pretrained(hf_dir).save_pretrained(str(d), max_shard_size="20KB")
    index = json.loads((d / "model.safetensors.index.json").read_text())
    return d, index


def _edit_weights(d, edit):
    sd = safetensors_numpy.load_file(str(d / "model.safetensors"))
    edit(sd)
    safetensors_numpy.save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})


def _edit_config(d, **fields):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(fields)
    (d / "config.json").write_text(json.dumps(cfg))


def _lying_dirs(hf_dir, root):
    d, index = _sharded(hf_dir, root, "duplicate")
    files = sorted(set(index["weight_map"].values()))
    first = safetensors_numpy.load_file(str(d / files[0]))
    name = sorted(first)[0]
    last = safetensors_numpy.load_file(str(d / files[-1]))
    last[name] = np.zeros_like(first[name])  # the same tensor, other values, in another shard
    safetensors_numpy.save_file(last, str(d / files[-1]), metadata={"format": "pt"})
    yield d, "is in two shards"
    d, index = _sharded(hf_dir, root, "moved")
    names = sorted(index["weight_map"], key=lambda n: index["weight_map"][n])
    a, b = names[0], names[-1]
    index["weight_map"][a], index["weight_map"][b] = index["weight_map"][b], index["weight_map"][a]
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    yield d, "but it is in"
    d = _copy(hf_dir, root, "nan")
    _edit_weights(d, lambda sd: sd[sorted(sd)[2]].__setitem__(Ellipsis, np.nan))
    yield d, "holds NaN or infinite values"
    d = _copy(hf_dir, root, "int")
    _edit_weights(d, lambda sd: sd.__setitem__("transformer.ln_f.weight", sd["transformer.ln_f.weight"].astype(np.int32)))
    yield d, "ln_f.weight holds int32 values"
    for field, value, message in (("resid_pdrop", None, "resid_pdrop=None must be a probability"),
                                  ("attn_pdrop", "0.1", "attn_pdrop='0.1' must be a probability"),
                                  ("activation_function", ["gelu_new"], "activation_function=['gelu_new'] is not"),
                                  ("tie_word_embeddings", "false", "tie_word_embeddings='false' must be true or false")):
        d = _copy(hf_dir, root, f"cfg_{field}")
        _edit_config(d, **{field: value})
        yield d, message
    d = _copy(hf_dir, root, "tokenizer_config")
    (d / "tokenizer_config.json").write_text('{"eos_token": "<|endoftext|>",')
    yield d, "tokenizer_config.json: unreadable"


def test_import_hf_refuses_a_directory_that_lies(hf_dir, tmp_path):
    """Each was imported silently before (or a traceback): the later shard's copy of a tensor won,
    NaN weights generated nothing, "false" tied the head, a broken tokenizer_config lost its tokens."""
    seen = 0
    for d, message in _lying_dirs(hf_dir, tmp_path):
        out = tmp_path / f"out_{d.name}"
        result = run_main("import-hf", "--model", d, "--out", out)
        assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1 and \
            result.stderr.startswith("nety-jax: error:"), (d.name, result.stderr)
        assert not out.exists(), d.name
        seen += 1
    assert seen == 9
    assert run_main("import-hf", "--model", hf_dir, "--out", tmp_path / "ok").returncode == 0


def test_init_from_into_a_run_started_from_another_source_is_refused(hf_dir, tmp_path):
    """A run with checkpoints resumes from its own weights: --init-from another source was ignored
    silently (the run went on from its own step and weights)."""
    from nety_jax.training.init_from import Source
    from nety_jax.training.setup import SOURCE_FILE, _record_source, check_same_source
    run = tmp_path / "run"
    assert run_main("import-hf", "--model", hf_dir, "--out", run).returncode == 0  # a run at step 0
    _record_source(str(run), Source(None, None, None, str(tmp_path / "first_source")))  # as a fine-tune records
    before = sorted(os.listdir(run))
    result = run_main("train", "--init-from", hf_dir, "--workdir", run, "--no-progress")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "started from" in result.stderr and f"--init-from {hf_dir} would be ignored" in result.stderr
    assert sorted(n for n in os.listdir(run) if n != ".lock") == before  # the lock: training's own
    assert (run / SOURCE_FILE).is_file()
    check_same_source(str(run), str(tmp_path / "first_source"))  # its own source: the run resumes
    said = []
    os.remove(run / SOURCE_FILE)  # a run that records no source (older, afresh): resumes, and says so
    check_same_source(str(run), hf_dir, said.append)
    assert said and "is ignored" in said[0]


def test_generation_config_eos_is_where_generation_stops(hf_dir, tmp_path):
    """transformers' generate stops at generation_config.json's eos_token_id; the import used
    config.json's alone and generated past it (a fine-tune whose end token is set there)."""
    import torch
    import transformers
    from nety_jax.models.gpt.hf_io import import_hf
    from nety_jax.serving.pretrained import load_pretrained
    d = _copy(hf_dir, tmp_path, "gen_eos")
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(d)).eval()
    ids = transformers.AutoTokenizer.from_pretrained(str(d)).encode("le chat mange la souris")
    with torch.no_grad():
        free = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                           do_sample=False, max_new_tokens=12, pad_token_id=0)[0, len(ids):].tolist()
    end = free[2]  # a token greedy decoding reaches: make it the end token
    gen = json.loads((d / "generation_config.json").read_text())
    (d / "generation_config.json").write_text(json.dumps({**gen, "eos_token_id": end}))
    model = load_pretrained(import_hf(str(d), str(tmp_path / "run")))
    assert model.tokenizer.specials["eos"] == end
    out = model.generate_ids(["le chat mange la souris"], temperature=0.0, max_new_tokens=12)
    ours = model.tokenizer.to_hf[out["tokens"][0][: out["lengths"][0]]].tolist()
    assert ours[:2] == free[:2] and len(ours) <= 3 and end not in ours[:2], (ours, free)
