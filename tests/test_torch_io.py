"""NETY's PyTorch weights in and out, with numerical parity against a PyTorch re-creation."""
import json

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nety_jax.cli import main  # noqa: E402
from nety_jax.models.hybrid import torch_io  # noqa: E402
from nety_jax.models.hybrid.network import HybridSeq2Seq  # noqa: E402
from nety_jax.serving.pretrained import load_pretrained  # noqa: E402
from conftest import PARITY, run_main  # noqa: E402
from nety_torch_reference import HybridRNNTransformer  # noqa: E402

V = 40
DIMS = dict(d_model=64, hidden=32, layers=2, enc_heads=4, dec_heads=8, dec_layers=2, d_ff=96, max_len=64)
WORDS = ["bonjour", "salut", "ça", "va", "bien", "merci", "et", "toi", "je", "suis", "content", "de",
         "te", "voir", "au", "revoir", "oui", "non", "nety", "il", "fait", "beau"]


def _batch(seed=0, b=6, s=9, t=7):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, V, (b, s), generator=g)
    for i, n in enumerate([9, 7, 5, 3, 9, 2][:b]):
        src[i, n:] = 0  # padding: NETY attends to it and pools at the last padded position
    tgt = torch.randint(4, V, (b, t), generator=g)
    tgt[:, 0] = 1
    return src, tgt


def _nety(seed=0, dropout=0.1, train_steps=0):
    torch.manual_seed(seed)
    model = HybridRNNTransformer(V, dropout=dropout, **DIMS)
    if train_steps:  # a few NETY-style steps so BatchNorm statistics are non-trivial
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        model.train()
        for step in range(train_steps):
            src, tgt = _batch(seed=100 + step)
            logits = model(src, tgt[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), tgt[:, 1:].reshape(-1),
                                                     ignore_index=0)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


def _write_nety_files(model, tmp_path):
    sd_path = tmp_path / "nety.pt"
    torch.save(model.state_dict(), sd_path)
    words = ["<pad>", "<sos>", "<eos>", "<unk>"] + WORDS + [f"mot{i}" for i in range(V - 4 - len(WORDS))]
    vocab_path = tmp_path / "vocab.json"
    vocab_path.write_text(json.dumps({"word_to_idx": {w: i for i, w in enumerate(words)},
                                      "idx_to_word": {str(i): w for i, w in enumerate(words)}}))
    return sd_path, vocab_path


@pytest.fixture(scope="module")
def trained_nety(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nety")
    model = _nety(seed=1, train_steps=5)
    sd, vocab = _write_nety_files(model, tmp)
    out = tmp / "imported"
    assert main(["import-torch", "--state-dict", str(sd), "--vocab", str(vocab), "--out", str(out)]) == 0
    return model, sd, vocab, str(out)


def test_state_dict_has_netys_168_names_at_full_size():
    full = HybridRNNTransformer(1000)
    assert len(full.state_dict()) == 168
    assert sum(p.numel() for p in full.parameters()) == 32_775_784
    from nety_jax.config import load_config
    cfg = load_config(PARITY, ["model.vocab_size=1000"])
    assert cfg == torch_io.parity_config()  # configs/nety_parity.yaml says what import-torch assumes
    layout = torch_io.state_dict_layout(cfg)
    assert {e.name for e in layout} == set(full.state_dict())
    expected = torch_io.expected_shapes(cfg, (1, 512, 512))
    assert all(expected[k] == tuple(v.shape) for k, v in full.state_dict().items())


def _max_rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-6))


@pytest.mark.parametrize("train_steps", [0, 5])
def test_imported_logits_equal_pytorch_in_eval_mode(tmp_path, train_steps):
    model = _nety(seed=train_steps, train_steps=train_steps).eval()
    sd, vocab = _write_nety_files(model, tmp_path)
    out = torch_io.import_torch(str(sd), str(vocab), str(tmp_path / "run"))
    ours = load_pretrained(out)
    if train_steps:
        bn = ours.variables["batch_stats"]["encoder"]["head"]["batch_norm1"]
        assert float(jnp.max(jnp.abs(bn["mean"]))) > 1e-3  # statistics are not the initial zeros
    src, tgt = _batch(seed=7)
    with torch.no_grad():
        ref = model(src, tgt).numpy()
    got = ours.logits({"src": src.numpy(), "src_len": np.full(len(src), src.shape[1]), "tgt_in": tgt.numpy()})
    assert _max_rel(got, ref) < 1e-4


def test_train_mode_outputs_and_batch_statistics_match(trained_nety, tmp_path):
    """Dropout 0, BatchNorm on batch statistics, and the running estimates it leaves behind."""
    model, sd, vocab, _ = trained_nety
    nodrop = HybridRNNTransformer(V, dropout=0.0, **DIMS)
    nodrop.load_state_dict(model.state_dict())
    nodrop.train()
    src, tgt = _batch(seed=11)
    ref = nodrop(src, tgt).detach().numpy()
    ours = load_pretrained(trained_nety[3])
    cfg0 = ours.config.model.replace(dropout=0.0, attention_dropout=0.0)
    lengths = jnp.full((len(src),), src.shape[1])
    got, updates = HybridSeq2Seq(cfg0).apply(ours.variables, jnp.asarray(src.numpy()), lengths,
                                             jnp.asarray(tgt.numpy()), train=True,
                                             mutable=["batch_stats"])
    assert _max_rel(got, ref) < 1e-4
    for i in (1, 2, 3):
        bn = getattr(nodrop.rnn_encoder, f"batch_norm{i}")
        new = updates["batch_stats"]["encoder"]["head"][f"batch_norm{i}"]
        np.testing.assert_allclose(np.asarray(new["mean"]), bn.running_mean.numpy(), atol=1e-5)
        np.testing.assert_allclose(np.asarray(new["var"]), bn.running_var.numpy(), rtol=1e-4, atol=1e-5)


def test_round_trip_gives_identical_tensors(trained_nety, tmp_path):
    model, _, _, imported = trained_nety
    out = tmp_path / "back.pt"
    assert main(["export-torch", "--checkpoint", imported, "--out", str(out)]) == 0
    back = torch.load(out, weights_only=True)
    original = model.state_dict()
    assert list(back) == list(original)
    for name, tensor in original.items():
        assert back[name].shape == tensor.shape, name
        assert torch.equal(back[name].to(tensor.dtype), tensor), name
    fresh = HybridRNNTransformer(V, **DIMS)
    fresh.load_state_dict(back, strict=True)


def test_an_int8_run_exports_dequantized_float_weights(trained_nety, tmp_path):
    """export-torch of a quantized run writes kernel * scale (not the raw int8 values): PyTorch's
    NETY and the re-imported run answer as the int8 model does, within float rounding."""
    model, _, vocab, imported = trained_nety
    q8, back = tmp_path / "q8", tmp_path / "q8.pt"
    assert main(["quantize", "--checkpoint", imported, "--out", str(q8)]) == 0
    assert main(["export-torch", "--checkpoint", str(q8), "--out", str(back)]) == 0
    weights = torch.load(back, weights_only=True)
    original = model.state_dict()
    for name, tensor in original.items():  # each within half an int8 step of the float weights
        if not tensor.is_floating_point():
            continue  # BatchNorm's batch counter: quantize does not carry it (PyTorch ignores it in eval)
        step = tensor.abs().max().item() / 127
        assert (weights[name].to(tensor.dtype) - tensor).abs().max().item() <= step / 2 + 1e-6, name
    nety = HybridRNNTransformer(V, **DIMS).eval()
    nety.load_state_dict(weights, strict=True)
    src, tgt = _batch(seed=3)
    batch = {"src": src.numpy(), "src_len": np.full(len(src), src.shape[1]), "tgt_in": tgt.numpy()}
    int8 = load_pretrained(str(q8)).logits(batch)
    with torch.no_grad():
        assert _max_rel(nety(src, tgt).numpy(), int8) < 1e-4
    again = torch_io.import_torch(str(back), str(vocab), str(tmp_path / "again"))
    assert _max_rel(load_pretrained(again).logits(batch), int8) < 1e-4


def test_imported_checkpoint_generates_with_the_word_vocabulary(trained_nety):
    imported = trained_nety[3]
    done = run_main("generate", "--checkpoint", imported, "--prompt", "Bonjour ça va", "--prompt", "merci",
                    "--temperature", "0", "--max-new-tokens", "6")
    assert done.returncode == 0, done.stderr
    replies = [line for line in done.stdout.splitlines() if not line.startswith("> ")]
    vocab = set(WORDS) | {f"mot{i}" for i in range(V)} | {"<unk>", "(empty", "reply)"}
    assert replies and all(set(r.split()) <= vocab for r in replies), replies


def test_imported_checkpoint_fine_tunes(trained_nety, tmp_path):
    import shutil
    run = tmp_path / "finetune"
    shutil.copytree(trained_nety[3], run)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"input": f"bonjour {w}", "target": f"salut {w}"}) + "\n"
                            for w in WORDS), encoding="utf-8")
    done = run_main("train", "--config", str(run / "config.yaml"), "--workdir", str(run), "--data", str(data),
                    "--steps", "3", "--no-progress", "--set", "train.batch_size=4", "--set", "train.warmup_steps=1",
                    "--set", "train.eval_every=3", "--set", "data.val_fraction=0.2")
    assert done.returncode == 0, done.stderr
    assert "resumed from" in done.stdout and "at step 0" in done.stdout


def test_malformed_state_dicts_get_clear_errors(trained_nety, tmp_path):
    model, sd, vocab, _ = trained_nety
    state = model.state_dict()
    cases = {}
    wrong_keys = dict(state)
    wrong_keys.pop("rnn_encoder.fc2.bias")
    wrong_keys["rnn_encoder.extra.weight"] = torch.zeros(3)
    cases["keys"] = (wrong_keys, "missing keys: rnn_encoder.fc2.bias; unexpected keys: rnn_encoder.extra.weight")
    wrong_shape = dict(state)
    wrong_shape["transformer_decoder.transformer_decoder.layers.0.linear2.weight"] = torch.zeros(64, 95)
    cases["shape"] = (wrong_shape, "linear2.weight has shape (64, 95), expected (64, 96)")
    cases["not_dict"] = ([1, 2, 3], "not a state dict")
    for name, (obj, message) in cases.items():
        path = tmp_path / f"{name}.pt"
        torch.save(obj, path)
        done = run_main("import-torch", "--state-dict", str(path), "--vocab", str(vocab),
                        "--out", str(tmp_path / f"o_{name}"))
        assert done.returncode == 2 and message in done.stderr, (name, done.stderr)
        assert "Traceback" not in done.stderr
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(Exception, match=r"not a PyTorch checkpoint \((?!Weights only)[^\n]+\)$"):
        torch_io.load_state_dict(str(garbage))
    garbage.write_bytes(b"garbage\n")  # torch's weights-only unpickler: the reason is on a later line
    with pytest.raises(Exception, match=r"not a PyTorch checkpoint \(Unsupported operand \d+\)$"):
        torch_io.load_state_dict(str(garbage))
    whole = tmp_path / "whole_model.pt"  # torch.save(model), not its state dict
    torch.save({"model": torch.nn.Linear(2, 2)}, whole)
    with pytest.raises(Exception, match=r"pickled Python object \(torch.nn.modules.linear.Linear\).*state_dict"):
        torch_io.load_state_dict(str(whole))
    small_vocab = tmp_path / "small.json"
    small_vocab.write_text(json.dumps({"word_to_idx": {"<pad>": 0, "<sos>": 1, "<eos>": 2, "<unk>": 3}}))
    with pytest.raises(Exception, match="4 words, but the state dict has a vocabulary of 40"):
        torch_io.import_torch(str(sd), str(small_vocab), str(tmp_path / "o_vocab"))
