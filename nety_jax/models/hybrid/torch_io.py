"""NETY's PyTorch ``state_dict`` in and out.

One table (``state_dict_layout``) lists every NETY tensor with the parts of our
variables it maps to: Linear weights are transposed (PyTorch is (out, in), Flax
(in, out)); NETY's separate encoder q, k, v are column blocks of our fused
``qkv`` kernel, and a decoder ``in_proj_weight`` IS our fused self-attention
kernel (its cross-attention one splits into ``query`` and ``kv``); an LSTM
layer's two directions are blocks of one input kernel and the two slices of a
stacked recurrent kernel, with PyTorch's two biases kept apart; BatchNorm
running statistics go to ``batch_stats``. Import and export both walk the same
table, so they cannot drift apart.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from collections import OrderedDict
from typing import Optional, Sequence

import jax
import numpy as np

from nety_jax import config as config_lib
from nety_jax.config import Config
from nety_jax.errors import CheckpointError, ConfigError, DataError, NetyError
from nety_jax.layers.linear import dequantize_variables
from nety_jax.runs import guard
from nety_jax.runs.files import read_run_config, write_run_config
from nety_jax.runs.quiet import first_line
from nety_jax.runs.weights import restore_inference_variables, write_weights

TORCH_META = "torch_meta.json"
TORCH_PE = "torch_pe.npy"  # NETY's own position buffer, written back unchanged by export-torch
# fields a NETY model must have; export-torch refuses other models
PARITY_FIELDS = {"arch": "hybrid", "cell": "lstm", "enc_attention_mask": False,
                 "enc_attention_residual": False, "pooling": "last_padded", "head_norm": "batch",
                 "memory": "pooled", "norm": "post", "output_bias": True, "tie_output": False,
                 "copy": False}
ALL = slice(None)


def _torch():
    try:
        import torch
    except ImportError:
        raise NetyError("this command needs PyTorch: pip install 'nety-jax[torch]' "
                        "(or `pip install torch`)") from None
    return torch


@dataclasses.dataclass(frozen=True)
class Part:
    path: tuple  # variable path, e.g. ("params", "encoder", "attention", "qkv", "kernel")
    index: tuple = ()  # the block of that variable (numpy index)
    rows: Optional[slice] = None  # the rows of the PyTorch tensor that map to it (None: all)


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str  # NETY state-dict key
    kind: str  # copy | linear (transposed) | pe | count
    parts: tuple = ()


def _encoder_entries(m, add) -> None:
    d = m.d_model
    enc = ("params", "encoder")
    qkv = enc + ("attention", "qkv")
    for i, torch_name in enumerate(("query", "key", "value")):
        cols = slice(i * d, (i + 1) * d)
        add(f"rnn_encoder.attention.{torch_name}.weight", "linear", Part(qkv + ("kernel",), (ALL, cols)))
        add(f"rnn_encoder.attention.{torch_name}.bias", "copy", Part(qkv + ("bias",), (cols,)))
    add("rnn_encoder.attention.fc_out.weight", "linear", Part(enc + ("attention", "out", "kernel")))
    add("rnn_encoder.attention.fc_out.bias", "copy", Part(enc + ("attention", "out", "bias")))
    g = 4 * m.enc_hidden
    for k in range(m.enc_layers):
        layer = enc + ("rnn", f"l{k}")
        for di, suffix in enumerate(("", "_reverse") if m.bidirectional else ("",)):
            block = slice(di * g, (di + 1) * g)
            add(f"rnn_encoder.lstm.weight_ih_l{k}{suffix}", "linear",
                Part(layer + ("input", "kernel"), (ALL, block)))
            add(f"rnn_encoder.lstm.weight_hh_l{k}{suffix}", "linear",
                Part(layer + ("recurrent", "kernel"), (di,)))
            add(f"rnn_encoder.lstm.bias_ih_l{k}{suffix}", "copy", Part(layer + ("input", "bias"), (block,)))
            add(f"rnn_encoder.lstm.bias_hh_l{k}{suffix}", "copy", Part(layer + ("recurrent", "bias"), (di,)))
    for i in range(1, len(m.head_dims) + 2):
        bn = ("encoder", "head", f"batch_norm{i}")
        add(f"rnn_encoder.batch_norm{i}.weight", "copy", Part(("params",) + bn + ("scale",)))
        add(f"rnn_encoder.batch_norm{i}.bias", "copy", Part(("params",) + bn + ("bias",)))
        add(f"rnn_encoder.batch_norm{i}.running_mean", "copy", Part(("batch_stats",) + bn + ("mean",)))
        add(f"rnn_encoder.batch_norm{i}.running_var", "copy", Part(("batch_stats",) + bn + ("var",)))
        add(f"rnn_encoder.batch_norm{i}.num_batches_tracked", "count")
        add(f"rnn_encoder.fc{i}.weight", "linear", Part(enc + ("head", f"fc{i}", "kernel")))
        add(f"rnn_encoder.fc{i}.bias", "copy", Part(enc + ("head", f"fc{i}", "bias")))
    add("rnn_encoder.layer_norm.weight", "copy", Part(enc + ("head", "layer_norm", "scale")))
    add("rnn_encoder.layer_norm.bias", "copy", Part(enc + ("head", "layer_norm", "bias")))


def _decoder_entries(m, add) -> None:
    d = m.d_model
    dec = ("params", "decoder")
    add("transformer_decoder.embedding.weight", "copy", Part(dec + ("embed", "embedding")))
    add("transformer_decoder.pos_encoding.pe", "pe")
    for i in range(m.dec_layers):
        t = f"transformer_decoder.transformer_decoder.layers.{i}"
        layer = dec + (f"layers_{i}",)
        add(f"{t}.self_attn.in_proj_weight", "linear", Part(layer + ("self_attn", "qkv", "kernel")))
        add(f"{t}.self_attn.in_proj_bias", "copy", Part(layer + ("self_attn", "qkv", "bias")))
        add(f"{t}.self_attn.out_proj.weight", "linear", Part(layer + ("self_attn", "out", "kernel")))
        add(f"{t}.self_attn.out_proj.bias", "copy", Part(layer + ("self_attn", "out", "bias")))
        cross = layer + ("cross_attn",)
        q, kv = slice(0, d), slice(d, 3 * d)
        add(f"{t}.multihead_attn.in_proj_weight", "linear",
            Part(cross + ("query", "kernel"), rows=q), Part(cross + ("kv", "kernel"), rows=kv))
        add(f"{t}.multihead_attn.in_proj_bias", "copy",
            Part(cross + ("query", "bias"), rows=q), Part(cross + ("kv", "bias"), rows=kv))
        add(f"{t}.multihead_attn.out_proj.weight", "linear", Part(cross + ("out", "kernel")))
        add(f"{t}.multihead_attn.out_proj.bias", "copy", Part(cross + ("out", "bias")))
        for lin in ("linear1", "linear2"):
            add(f"{t}.{lin}.weight", "linear", Part(layer + ("ffn", lin, "kernel")))
            add(f"{t}.{lin}.bias", "copy", Part(layer + ("ffn", lin, "bias")))
        for n in (1, 2, 3):
            add(f"{t}.norm{n}.weight", "copy", Part(layer + (f"norm{n}", "scale")))
            add(f"{t}.norm{n}.bias", "copy", Part(layer + (f"norm{n}", "bias")))
    add("transformer_decoder.fc_out.weight", "linear", Part(dec + ("fc_out", "kernel")))
    add("transformer_decoder.fc_out.bias", "copy", Part(dec + ("fc_out", "bias")))


def state_dict_layout(cfg: Config) -> list[Entry]:
    out: list[Entry] = []

    def add(name, kind, *parts):
        out.append(Entry(name, kind, tuple(parts)))

    add("rnn_embedding.weight", "copy", Part(("params", "enc_embed", "embedding")))
    _encoder_entries(cfg.model, add)
    _decoder_entries(cfg.model, add)
    return out


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _to_torch(kind: str, block: np.ndarray) -> np.ndarray:
    return block.T if kind == "linear" else block


# -- shapes ----------------------------------------------------------------------------------------
def expected_shapes(cfg: Config, pe_shape) -> dict:
    """NETY state-dict shapes for ``cfg``, read off the abstract variables (nothing allocated)."""
    from nety_jax.models import get_model
    abstract = get_model(cfg.model).abstract_variables()
    m = cfg.model
    shapes = {}
    for e in state_dict_layout(cfg):
        if e.kind == "pe":
            shapes[e.name] = tuple(pe_shape) if pe_shape else (1, m.max_len, m.d_model)
        elif e.kind == "count":
            shapes[e.name] = ()
        else:
            blocks = [np.broadcast_to(np.zeros((), np.float32), _get(abstract, p.path).shape)[p.index]
                      for p in e.parts]
            torch_blocks = [_to_torch(e.kind, b) for b in blocks]
            rows = sum(b.shape[0] for b in torch_blocks)
            shapes[e.name] = (rows,) + tuple(torch_blocks[0].shape[1:])
    return shapes


# -- reading a state dict ------------------------------------------------------------------------
def _load_error(e: Exception) -> str:
    """torch.load's many-line error -> what is wrong with the file, in one line."""
    text = str(e)
    pickled = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if pickled:  # torch.save(model) rather than torch.save(model.state_dict())
        return (f"holds a pickled Python object ({pickled[1]}), not only tensors; save and import the "
                "model's state dict: torch.save(model.state_dict(), path)")
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    first = detail[1] if detail else (text.strip().splitlines() or [type(e).__name__])[0]
    return f"not a PyTorch checkpoint ({first[:200]})"



def load_state_dict(path: str) -> dict[str, np.ndarray]:
    torch = _torch()
    if os.path.isdir(path) or not os.path.isfile(path):
        raise CheckpointError(f"{path}: state dict file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for non-checkpoint files
        raise CheckpointError(f"{path}: {_load_error(e)}") from None
    for wrapper in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not obj or \
            not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        raise CheckpointError(f"{path}: not a state dict (expected a mapping of names to tensors)")
    return {k: v.detach().cpu().float().numpy() if v.is_floating_point() else v.detach().cpu().numpy()
            for k, v in obj.items()}


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
    if base.model.arch != "hybrid":
        raise CheckpointError(f"{where}: NETY's weights are a hybrid model; the config says "
                              f"model.arch={base.model.arch}")
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
        if e.kind == "pe":
            out[e.name] = pe if pe is not None else sinusoidal_table(m.max_len, m.d_model).reshape(
                tuple(pe_shape) if pe_shape else (1, m.max_len, m.d_model))
        elif e.kind == "count":
            out[e.name] = np.asarray(batches_tracked, np.int64)
        else:
            blocks = [_to_torch(e.kind, np.asarray(_get(variables, p.path), np.float32)[p.index])
                      for p in e.parts]
            out[e.name] = np.ascontiguousarray(np.concatenate(blocks, axis=0) if len(blocks) > 1 else blocks[0])
    return out


def from_torch_arrays(sd: dict[str, np.ndarray], cfg: Config) -> dict:
    """NETY's state-dict arrays -> our variables (params + batch_stats)."""
    from nety_jax.models import get_model
    abstract = get_model(cfg.model).abstract_variables()
    variables = jax.tree_util.tree_map(lambda a: np.zeros(a.shape, np.float32), abstract)
    for e in state_dict_layout(cfg):
        if e.kind in ("pe", "count"):
            continue
        value = np.asarray(sd[e.name], np.float32)
        for p in e.parts:
            target = _get(variables, p.path)
            target[p.index] = _to_torch(e.kind, value if p.rows is None else value[p.rows])
    return variables


# -- commands --------------------------------------------------------------------------------------
def parity_config() -> Config:
    """NETY exactly (configs/nety_parity.yaml says the same; a test keeps them equal)."""
    from nety_jax.config import DataConfig, DecodeConfig, TrainConfig
    from nety_jax.models.hybrid.config import HybridConfig
    model = dataclasses.replace(HybridConfig(), **PARITY_FIELDS, vocab_size=1000)
    data = DataConfig(max_src_len=50, max_tgt_len=50, src_eos=False, tokenizer="word", lowercase=True)
    train = TrainConfig(optimizer="adam", learning_rate=1e-4, weight_decay=0.0, b2=0.999, eps=1e-8,
                        clip_norm=0.0, schedule="constant", warmup_steps=0, label_smoothing=0.0,
                        batch_size=4)
    return Config(model=model, data=data, train=train, decode=DecodeConfig()).validate()


def _base_config(config_path: Optional[str], overrides: Sequence[str], warn) -> Config:
    if config_path is not None:
        return config_lib.load_config(config_path, list(overrides))
    if not any(o.split("=")[0].strip() in ("model.enc_heads", "model.dec_heads") for o in overrides):
        warn("warning: a state dict does not record attention heads; assuming NETY's defaults "
             "(model.enc_heads=4, model.dec_heads=8). If your NETY used others, pass --config or "
             "--set model.enc_heads=N --set model.dec_heads=N: wrong heads give wrong outputs")
    return config_lib.from_dict(config_lib.apply_overrides(parity_config().to_dict(), list(overrides)),
                                where="--set")


def _check_overrides(overrides: Sequence[str], cfg: Config, where: str) -> None:
    """A ``--set`` of a field the state dict fixes (its shapes, NETY's architecture and text
    handling) must say what the import writes: ``--set model.d_model=64`` over a 32-wide NETY was
    replaced by 32 without a word."""
    fixed = {"model": set(PARITY_FIELDS) | {"vocab_size", "d_model", "enc_hidden", "enc_layers",
                                            "bidirectional", "head_dims", "dec_layers", "d_ff", "max_len"},
             "data": {"tokenizer", "lowercase", "src_eos"}}
    given = config_lib.apply_overrides({}, list(overrides))
    for section, names in fixed.items():
        for name, value in (given.get(section) or {}).items():
            kept = getattr(getattr(cfg, section), name, None)
            if name in names and value != (list(kept) if isinstance(kept, tuple) else kept):
                raise ConfigError(f"--set {section}.{name}={value!r} contradicts {where}, whose "
                                  f"{section}.{name} is {kept!r}: NETY's state dict fixes the architecture "
                                  f"and text handling (remove the --set)")


def import_torch(state_dict_path: str, vocab_path: str, out: str, config_path: Optional[str] = None,
                 overrides: Sequence[str] = (), warn=print, overwrite: bool = False) -> str:
    """Writes a run directory (config, word tokenizer, step-0 weights) from NETY's files, through
    the writers' guard (a new or empty directory, or an earlier import-torch output with
    ``overwrite``)."""
    with guard.output(out, "import-torch", overwrite) as tmp:  # checked before any work
        _import_into(state_dict_path, vocab_path, tmp, config_path, overrides, warn)
    return out


def _import_into(state_dict_path: str, vocab_path: str, out: str, config_path: Optional[str],
                 overrides: Sequence[str], warn) -> None:
    from nety_jax.data.tokenizer import WordTokenizer
    sd = load_state_dict(state_dict_path)
    base = _base_config(config_path, overrides, warn)
    # NETY's text handling: its word vocabulary, lowercased, no <eos> on sources
    base = base.replace(data=dataclasses.replace(base.data, tokenizer="word", lowercase=True,
                                                 src_eos=False))
    cfg = infer_config(sd, base, state_dict_path)
    _check_overrides(overrides, cfg, state_dict_path)
    layout = state_dict_layout(cfg)
    pe_shape = tuple(sd["transformer_decoder.pos_encoding.pe"].shape)
    check_layout(sd, layout, expected_shapes(cfg, pe_shape), state_dict_path)
    tokenizer = WordTokenizer.load_vocab(vocab_path)
    if tokenizer.vocab_size != cfg.model.vocab_size:
        raise DataError(f"{vocab_path}: {tokenizer.vocab_size} words, but the state dict has a "
                        f"vocabulary of {cfg.model.vocab_size}")
    variables = from_torch_arrays(sd, cfg)
    write_run_config(out, cfg)
    tokenizer.save(out)
    tracked = int(sd.get("rnn_encoder.batch_norm1.num_batches_tracked", np.asarray(0)))
    with open(os.path.join(out, TORCH_META), "w", encoding="utf-8") as f:
        json.dump({"source": os.path.abspath(state_dict_path), "pe_shape": list(pe_shape),
                   "num_batches_tracked": tracked}, f)
    np.save(os.path.join(out, TORCH_PE), sd["transformer_decoder.pos_encoding.pe"])
    write_weights(out, cfg, variables, 0, {"imported_from": os.path.abspath(state_dict_path)})


def _read_meta(path: str) -> dict:
    """What import-torch recorded beside the run (``TORCH_META``); {} for a run trained here."""
    from nety_jax.data.tokenizer import read_json
    if not os.path.isfile(path):
        return {}
    meta = read_json(path, "missing", "malformed; import the state dict again")
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: not import-torch's record (expected a JSON object); import the "
                              "state dict again")
    return meta


def _read_pe(path: str) -> Optional[np.ndarray]:
    """NETY's own position buffer as import-torch kept it; None for a run trained here."""
    if not os.path.isfile(path):
        return None
    try:
        return np.load(path)
    except (OSError, ValueError, EOFError) as e:
        raise CheckpointError(f"{path}: unreadable ({first_line(e)}); import the state dict again") from None


def export_torch(checkpoint: str, out_file: str, overwrite: bool = False) -> str:
    from nety_jax.models import get_model
    target = guard.claim(out_file, "export-torch", overwrite)  # before any work
    cfg = read_run_config(checkpoint)
    wrong = [f"model.{k}={getattr(cfg.model, k, None)!r} (NETY: {v!r})" for k, v in PARITY_FIELDS.items()
             if getattr(cfg.model, k, None) != v]
    if wrong:  # another architecture: its arch alone (the hybrid's other fields mean nothing to it)
        raise ConfigError(f"{checkpoint}: only NETY-parity models can be exported to PyTorch "
                          f"(train with configs/nety_parity.yaml); this one has "
                          f"{', '.join(wrong[:1] if cfg.model.arch != 'hybrid' else wrong[:3])}")
    torch = _torch()  # after the checks that need no PyTorch: without it, a wrong model is still named
    meta = _read_meta(os.path.join(checkpoint, TORCH_META))
    pe = _read_pe(os.path.join(checkpoint, TORCH_PE))
    variables, _ = restore_inference_variables(checkpoint, cfg, get_model(cfg.model).abstract_variables())
    variables = jax.device_get(variables)
    if cfg.model.quant != "none":  # PyTorch's NETY has float weights: int8 kernels times their scales
        variables = dequantize_variables(variables)
    arrays = to_torch_arrays(variables, cfg, meta.get("pe_shape"),
                             meta.get("num_batches_tracked", 0), pe)
    state = OrderedDict((k, torch.from_numpy(np.array(v, copy=True))) for k, v in arrays.items())
    with target.staging() as tmp:
        torch.save(state, tmp)
    return out_file
