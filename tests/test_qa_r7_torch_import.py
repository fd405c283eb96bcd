"""QA round 7: `import-torch --set` of a field NETY's state dict fixes."""
import json

import pytest

from conftest import run_main

torch = pytest.importorskip("torch")

V = 40
HEADS = ["--set", "model.enc_heads=2", "--set", "model.dec_heads=4"]


@pytest.fixture(scope="module")
def nety_files(tmp_path_factory):
    from nety_torch_reference import HybridRNNTransformer
    tmp = tmp_path_factory.mktemp("nety")
    torch.manual_seed(0)
    model = HybridRNNTransformer(V, d_model=32, hidden=16, layers=2, enc_heads=2, dec_heads=4, dec_layers=1,
                                 d_ff=64, max_len=60)
    torch.save(model.state_dict(), tmp / "nety.pt")
    words = ["<pad>", "<sos>", "<eos>", "<unk>"] + [f"mot{i}" for i in range(V - 4)]
    (tmp / "vocab.json").write_text(json.dumps({"word_to_idx": {w: i for i, w in enumerate(words)},
                                                "idx_to_word": {str(i): w for i, w in enumerate(words)}}))
    return tmp / "nety.pt", tmp / "vocab.json"


@pytest.mark.parametrize("setting", ["model.d_model=64", "model.max_len=128", "model.head_dims=[8]",
                                     "model.memory=sequence", "data.lowercase=false"])
def test_a_set_the_state_dict_contradicts_is_refused(nety_files, tmp_path, setting):
    """`--set model.d_model=64` over a 32-wide NETY (or another max_len, head, memory mode, NETY's
    lowercasing turned off) was replaced by the state dict's value without a word: the run said
    what the user had not asked for. It is one line naming the field and both values, nothing written."""
    sd, vocab = nety_files
    out = tmp_path / "run"
    result = run_main("import-torch", "--state-dict", sd, "--vocab", vocab, "--out", out, *HEADS, "--set", setting)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"--set {setting.split('=')[0]}=" in result.stderr and "contradicts" in result.stderr
    assert not out.exists()


def test_a_set_the_state_dict_agrees_with_is_taken(nety_files, tmp_path):
    sd, vocab = nety_files
    out = tmp_path / "run"
    result = run_main("import-torch", "--state-dict", sd, "--vocab", vocab, "--out", out, *HEADS,
                      "--set", "model.d_model=32", "--set", "model.head_dims=[256, 128]",
                      "--set", "model.dropout=0.0")
    assert result.returncode == 0, result.stderr
    from nety_jax.runs.files import read_run_config
    cfg = read_run_config(str(out))
    assert cfg.model.d_model == 32 and cfg.model.dropout == 0.0 and cfg.model.enc_layers == 2
