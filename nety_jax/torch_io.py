"""NETY's PyTorch ``state_dict`` in and out.

One table (``state_dict_layout``) lists every NETY tensor with the variables it
maps to and how: Linear weights are transposed (PyTorch is (out, in), Flax
(in, out)); ``in_proj_weight`` / ``in_proj_bias`` stack q, k, v; the LSTM's two
biases stay two (our cell has an input and a hidden bias, as PyTorch's);
BatchNorm running statistics go to ``batch_stats``. Import and export both walk
the same table, so they cannot drift apart.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Optional, Sequence

import jax
import numpy as np

from nety_jax import checkpoint as ckpt
from nety_jax import config as config_lib
from nety_jax.config import Config
from nety_jax.errors import CheckpointError, ConfigError, DataError, NetyError

TORCH_META = "torch_meta.json"
TORCH_PE = "torch_pe.npy"  # NETY's own position buffer, written back unchanged by export-torch
# fields a NETY model must have; export-torch refuses other models
PARITY_FIELDS = {"cell": "lstm", "enc_attention_mask": False, "enc_attention_residual": False,
                 "pooling": "last_padded", "head_norm": "batch", "memory": "pooled",
                 "norm": "post", "output_bias": True, "tie_output": False}


def _torch():
    try:
        import torch
    except ImportError:
        raise NetyError("this command needs PyTorch: pip install 'nety-jax[torch]' "
                        "(or `pip install torch`)") from None
    return torch


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str  # NETY state-dict key
    kind: str  # copy | linear (transpose) | qkv_weight | qkv_bias | pe | count
    paths: tuple  # variable paths, e.g. (("params", "enc_embed", "embedding"),)


def state_dict_layout(cfg: Config) -> list[Entry]:
    m = cfg.model
    out: list[Entry] = []
    P = ("params",)

    def add(name, kind, *paths):
        out.append(Entry(name, kind, tuple(paths)))

    def linear(name, path):
        add(f"{name}.weight", "linear", path + ("kernel",))
        add(f"{name}.bias", "copy", path + ("bias",))

    add("rnn_embedding.weight", "copy", P + ("enc_embed", "embedding"))
    enc = P + ("encoder",)
    for torch_name, ours in (("query", "query"), ("key", "key"), ("value", "value"), ("fc_out", "out")):
        linear(f"rnn_encoder.attention.{torch_name}", enc + ("attention", ours))
    for k in range(m.enc_layers):
        for suffix in ("", "_reverse") if m.bidirectional else ("",):
            base = enc + ("rnn", f"l{k}{suffix}")
            add(f"rnn_encoder.lstm.weight_ih_l{k}{suffix}", "linear", base + ("input", "kernel"))
            add(f"rnn_encoder.lstm.weight_hh_l{k}{suffix}", "linear",
                base + ("recurrent", "hidden", "kernel"))
            add(f"rnn_encoder.lstm.bias_ih_l{k}{suffix}", "copy", base + ("input", "bias"))
            add(f"rnn_encoder.lstm.bias_hh_l{k}{suffix}", "copy", base + ("recurrent", "hidden", "bias"))
    for i in range(1, len(m.head_dims) + 2):
        bn = ("encoder", "head", f"batch_norm{i}")
        add(f"rnn_encoder.batch_norm{i}.weight", "copy", P + bn + ("scale",))
        add(f"rnn_encoder.batch_norm{i}.bias", "copy", P + bn + ("bias",))
        add(f"rnn_encoder.batch_norm{i}.running_mean", "copy", ("batch_stats",) + bn + ("mean",))
        add(f"rnn_encoder.batch_norm{i}.running_var", "copy", ("batch_stats",) + bn + ("var",))
        add(f"rnn_encoder.batch_norm{i}.num_batches_tracked", "count")
        linear(f"rnn_encoder.fc{i}", enc + ("head", f"fc{i}"))
    add("rnn_encoder.layer_norm.weight", "copy", enc + ("head", "layer_norm", "scale"))
    add("rnn_encoder.layer_norm.bias", "copy", enc + ("head", "layer_norm", "bias"))

    dec = P + ("decoder",)
    add("transformer_decoder.embedding.weight", "copy", dec + ("embed", "embedding"))
    add("transformer_decoder.pos_encoding.pe", "pe")
    for i in range(m.dec_layers):
        t = f"transformer_decoder.transformer_decoder.layers.{i}"
        layer = dec + (f"layers_{i}",)
        for torch_attn, ours in (("self_attn", "self_attn"), ("multihead_attn", "cross_attn")):
            qkv = [layer + (ours, p) for p in ("query", "key", "value")]
            add(f"{t}.{torch_attn}.in_proj_weight", "qkv_weight", *[q + ("kernel",) for q in qkv])
            add(f"{t}.{torch_attn}.in_proj_bias", "qkv_bias", *[q + ("bias",) for q in qkv])
            linear(f"{t}.{torch_attn}.out_proj", layer + (ours, "out"))
        linear(f"{t}.linear1", layer + ("ffn", "linear1"))
        linear(f"{t}.linear2", layer + ("ffn", "linear2"))
        for n in (1, 2, 3):
            add(f"{t}.norm{n}.weight", "copy", layer + (f"norm{n}", "scale"))
            add(f"{t}.norm{n}.bias", "copy", layer + (f"norm{n}", "bias"))
    linear("transformer_decoder.fc_out", dec + ("fc_out",))
    return out


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree, path, value):
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


# -- reading a state dict ------------------------------------------------------------------------
def load_state_dict(path: str) -> dict[str, np.ndarray]:
    torch = _torch()
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: state dict file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for non-checkpoint files
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({first})") from None
    for wrapper in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not obj or \
            not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        raise CheckpointError(f"{path}: not a state dict (expected a mapping of names to tensors)")
    return {k: v.detach().cpu().numpy() for k, v in obj.items()}


def infer_config(sd: dict[str, np.ndarray], base: Config, where: str) -> Config:
    """NETY's dimensions read off the tensor shapes; heads come from ``base``."""
    def shape(name):
        if name not in sd:
            raise CheckpointError(f"{where}: missing key {name!r}; is this NETY's HybridRNNTransformer?")
        return sd[name].shape

    vocab, d_model = shape("rnn_embedding.weight")
    hidden = shape("rnn_encoder.lstm.weight_hh_l0")[1]
    layers = len([k for k in sd if re.fullmatch(r"rnn_encoder\.lstm\.weight_ih_l\d+", k)])
    bidirectional = "rnn_encoder.lstm.weight_ih_l0_reverse" in sd
    n_fc = len([k for k in sd if re.fullmatch(r"rnn_encoder\.fc\d+\.weight", k)])
    head_dims = tuple(int(shape(f"rnn_encoder.fc{i}.weight")[0]) for i in range(1, n_fc))
    dec_layers = len({k.split(".")[3] for k in sd
                      if k.startswith("transformer_decoder.transformer_decoder.layers.")})
    d_ff = shape("transformer_decoder.transformer_decoder.layers.0.linear1.weight")[0]
    pe = shape("transformer_decoder.pos_encoding.pe")
    lengths = [n for n in pe[:-1] if n != 1]  # (1, L, D), (L, 1, D) or (L, D)
    max_len = int(lengths[0]) if lengths else 1
    dec_vocab = shape("transformer_decoder.fc_out.weight")[0]
    if dec_vocab != vocab:
        raise CheckpointError(f"{where}: encoder vocabulary {vocab} != decoder vocabulary {dec_vocab}")
    model = dataclasses.replace(base.model, **PARITY_FIELDS, vocab_size=int(vocab), d_model=int(d_model),
                                enc_hidden=int(hidden), enc_layers=layers, bidirectional=bidirectional,
                                head_dims=head_dims, dec_layers=dec_layers, d_ff=int(d_ff),
                                max_len=max_len)
    try:
        return base.replace(model=model).validate()
    except ConfigError as e:
        raise CheckpointError(f"{where}: inconsistent shapes ({e})") from None


def check_layout(sd: dict, layout: list[Entry], expected: dict, where: str) -> None:
    names = {e.name for e in layout}
    missing = sorted(names - set(sd))
    unexpected = sorted(set(sd) - names)
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected[:5])}"
                        + (" ..." if len(unexpected) > 5 else ""))
    for e in layout:
        if e.name in sd and e.name in expected and tuple(sd[e.name].shape) != expected[e.name]:
            problems.append(f"{e.name} has shape {tuple(sd[e.name].shape)}, expected {expected[e.name]}")
            break
    if problems:
        raise CheckpointError(f"{where}: not NETY's state dict for this config: " + "; ".join(problems))


def to_torch_arrays(variables: dict, cfg: Config, pe_shape: Optional[Sequence[int]] = None,
                    batches_tracked: int = 0, pe: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
    """Our variables -> NETY's state-dict arrays (float32 numpy)."""
    from nety_jax.layers import sinusoidal_table
    m = cfg.model
    out = {}
    for e in state_dict_layout(cfg):
        vals = [np.asarray(_get(variables, p), np.float32) for p in e.paths]
        if e.kind == "copy":
            out[e.name] = vals[0]
        elif e.kind == "linear":
            out[e.name] = vals[0].T
        elif e.kind == "qkv_weight":
            out[e.name] = np.concatenate([v.T for v in vals], axis=0)
        elif e.kind == "qkv_bias":
            out[e.name] = np.concatenate(vals, axis=0)
        elif e.kind == "pe" and pe is not None:
            out[e.name] = pe
        elif e.kind == "pe":
            out[e.name] = sinusoidal_table(m.max_len, m.d_model).reshape(
                tuple(pe_shape) if pe_shape else (1, m.max_len, m.d_model))
        elif e.kind == "count":
            out[e.name] = np.asarray(batches_tracked, np.int64)
    return out


def from_torch_arrays(sd: dict[str, np.ndarray], cfg: Config) -> dict:
    """NETY's state-dict arrays -> our variables (params + batch_stats)."""
    variables: dict = {}
    for e in state_dict_layout(cfg):
        value = np.asarray(sd[e.name])
        if e.kind in ("pe", "count"):
            continue
        if e.kind == "copy":
            parts = [value]
        elif e.kind == "linear":
            parts = [value.T]
        elif e.kind == "qkv_weight":
            parts = [w.T for w in np.split(value, 3, axis=0)]
        else:
            parts = np.split(value, 3, axis=0)
        for path, part in zip(e.paths, parts):
            _set(variables, path, np.ascontiguousarray(part, np.float32))
    return variables


def expected_shapes(cfg: Config, pe_shape) -> dict:
    """NETY state-dict shapes for ``cfg``, read off the abstract variables (nothing allocated)."""
    from nety_jax.model import abstract_variables
    abstract = abstract_variables(cfg.model)
    m = cfg.model
    shapes = {}
    for e in state_dict_layout(cfg):
        dims = [tuple(_get(abstract, p).shape) for p in e.paths]
        if e.kind == "copy":
            shapes[e.name] = dims[0]
        elif e.kind == "linear":
            shapes[e.name] = dims[0][::-1]
        elif e.kind == "qkv_weight":
            shapes[e.name] = (sum(d[1] for d in dims), dims[0][0])
        elif e.kind == "qkv_bias":
            shapes[e.name] = (sum(d[0] for d in dims),)
        elif e.kind == "pe":
            shapes[e.name] = tuple(pe_shape) if pe_shape else (1, m.max_len, m.d_model)
        else:  # count
            shapes[e.name] = ()
    return shapes


# -- commands --------------------------------------------------------------------------------------
def import_torch(state_dict_path: str, vocab_path: str, out: str, config_path: Optional[str] = None,
                 overrides: Sequence[str] = ()) -> str:
    """Writes a run directory (config, word tokenizer, step-0 checkpoint) from NETY's files."""
    from nety_jax.steps import create_train_state
    from nety_jax.tokenizer import WordTokenizer

    sd = load_state_dict(state_dict_path)
    base = config_lib.load_config(config_path, list(overrides))
    # NETY's text handling: its word vocabulary, lowercased, no <eos> on sources
    base = base.replace(data=dataclasses.replace(base.data, tokenizer="word", lowercase=True,
                                                 src_eos=False))
    cfg = infer_config(sd, base, state_dict_path)
    layout = state_dict_layout(cfg)
    pe_shape = tuple(sd["transformer_decoder.pos_encoding.pe"].shape)
    check_layout(sd, layout, expected_shapes(cfg, pe_shape), state_dict_path)
    tokenizer = WordTokenizer.load_vocab(vocab_path)
    if tokenizer.vocab_size != cfg.model.vocab_size:
        raise DataError(f"{vocab_path}: {tokenizer.vocab_size} words, but the state dict has a "
                        f"vocabulary of {cfg.model.vocab_size}")
    variables = from_torch_arrays(sd, cfg)
    if os.path.isdir(ckpt.checkpoint_dir(out)) and ckpt.latest_step(out) is not None:
        raise CheckpointError(f"{out}: already holds checkpoints; choose an empty --out")
    os.makedirs(out, exist_ok=True)
    config_lib.save_config(cfg, os.path.join(out, ckpt.CONFIG_FILE))
    tokenizer.save(out)
    tracked = int(sd.get("rnn_encoder.batch_norm1.num_batches_tracked", np.asarray(0)))
    with open(os.path.join(out, TORCH_META), "w", encoding="utf-8") as f:
        json.dump({"source": os.path.abspath(state_dict_path), "pe_shape": list(pe_shape),
                   "num_batches_tracked": tracked}, f)
    np.save(os.path.join(out, TORCH_PE), sd["transformer_decoder.pos_encoding.pe"])
    state = create_train_state(cfg, jax.random.PRNGKey(cfg.train.seed), variables)
    manager = ckpt.make_manager(out, cfg)
    ckpt.save(manager, 0, state, {"data": {"epoch": 0, "index": 0}, "config": cfg.to_dict(),
                                  "imported_from": os.path.abspath(state_dict_path)}, force=True)
    manager.wait_until_finished()
    manager.close()
    return out


def export_torch(checkpoint: str, out_file: str) -> str:
    from nety_jax.pretrained import load_pretrained
    torch = _torch()
    model = load_pretrained(checkpoint)
    cfg = model.config
    wrong = [f"model.{k}={getattr(cfg.model, k)!r} (NETY: {v!r})" for k, v in PARITY_FIELDS.items()
             if getattr(cfg.model, k) != v]
    if wrong:
        raise ConfigError(f"{checkpoint}: only NETY-parity models can be exported to PyTorch; "
                          f"this one has {', '.join(wrong[:3])}")
    meta = {}
    meta_path = os.path.join(checkpoint, TORCH_META)
    if os.path.isfile(meta_path):
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    pe_path = os.path.join(checkpoint, TORCH_PE)
    pe = np.load(pe_path) if os.path.isfile(pe_path) else None
    arrays = to_torch_arrays(jax.device_get(model.variables), cfg, meta.get("pe_shape"),
                             meta.get("num_batches_tracked", 0), pe)
    from collections import OrderedDict
    state = OrderedDict((k, torch.from_numpy(np.array(v, copy=True))) for k, v in arrays.items())
    os.makedirs(os.path.dirname(os.path.abspath(out_file)), exist_ok=True)
    torch.save(state, out_file)
    return out_file
