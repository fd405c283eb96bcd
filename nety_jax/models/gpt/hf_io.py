"""HuggingFace GPT-2 in and out: ``config.json``, the weights and the tokenizer.

``load_hf(DIR)`` reads a directory as ``save_pretrained`` writes it (or as it sits in a hub
cache) into (our config, our tokenizer, our variables); ``import_hf`` writes that as a run
directory; ``export_hf`` writes a run back as a directory that
``transformers.GPT2LMHeadModel.from_pretrained`` and ``AutoTokenizer`` load.

One table (``layout``) lists every GPT-2 tensor with the variable it is and how: GPT-2's
Conv1D weights are stored (in, out), as our Dense kernels, so they are copied as they are
(``c_attn``'s q, k, v column blocks are our fused ``qkv``'s); the vocabulary rows of
``wte`` and ``lm_head`` are reordered by the tokenizer's id map (``data/hf_tokenizer.py``:
our ids 0-3 are pad, sos, eos, unk), and our special ids that GPT-2 lacks get zero rows
and blocked logits. Import and export walk the same table. Weights in float16 or bfloat16
become float32 parameters (model.dtype, the compute dtype, stays a config choice).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Optional

import numpy as np

from nety_jax.errors import CheckpointError, ConfigError, DataError

CONFIG = "config.json"
# GPT-2's activation names -> ours (gelu_new and its aliases are the tanh approximation)
ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu_fast": "gelu", "gelu": "gelu_exact",
               "relu": "relu"}
OUR_ACTIVATIONS = {"gelu": "gelu_new", "gelu_exact": "gelu", "relu": "relu"}
BUFFERS = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)$")  # causal-mask buffers of older files
# GPT-2 options whose other values compute something our gpt does not
UNSUPPORTED = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "add_cross_attention": False}


# -- config ----------------------------------------------------------------------------------------
def read_hf_config(model_dir: str) -> dict:
    if not os.path.isdir(model_dir):
        raise CheckpointError(f"--model {model_dir}: no such directory")
    path = os.path.join(model_dir, CONFIG)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: not found; a HuggingFace model directory has a config.json")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not JSON ({e})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    if raw.get("model_type") != "gpt2":
        arch = ", ".join(raw.get("architectures") or []) or "no architectures listed"
        raise CheckpointError(f"{path}: model_type {raw.get('model_type')!r} ({arch}) is not GPT-2; "
                              "import-hf reads GPT-2-family models (model_type gpt2, GPT2LMHeadModel)")
    return raw


def _int_field(raw: dict, name: str, path: str, default=None) -> int:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CheckpointError(f"{path}: {name}={value!r} must be a positive integer")
    return value


def _prob_field(raw: dict, name: str, path: str, default: float) -> float:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise CheckpointError(f"{path}: {name}={value!r} must be a probability (a number in [0, 1])")
    return float(value)


def model_config(raw: dict, vocab_size: int, blocked_ids: tuple, path: str):
    """Our ``gpt`` model section for a GPT-2 config.json (``vocab_size``: ours, after the id map)."""
    from nety_jax.models.gpt.config import GPTConfig
    for name, value in UNSUPPORTED.items():
        if raw.get(name, value) != value:
            raise CheckpointError(f"{path}: {name}={raw[name]!r} is not supported (GPT-2 uses {value!r})")
    act = raw.get("activation_function", "gelu_new")
    if not isinstance(act, str) or act not in ACTIVATIONS:
        raise CheckpointError(f"{path}: activation_function={act!r} is not supported "
                              f"(one of {', '.join(ACTIVATIONS)})")
    d = _int_field(raw, "n_embd", path, 768)
    inner = raw.get("n_inner")
    eps = raw.get("layer_norm_epsilon", 1e-5)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
        raise CheckpointError(f"{path}: layer_norm_epsilon={eps!r} must be a positive number")
    tied = raw.get("tie_word_embeddings", True)
    if not isinstance(tied, bool):  # "false" as a string would tie the head silently
        raise CheckpointError(f"{path}: tie_word_embeddings={tied!r} must be true or false")
    cfg = GPTConfig(vocab_size=vocab_size, max_len=_int_field(raw, "n_positions", path, 1024), d_model=d,
                    heads=_int_field(raw, "n_head", path, 12), layers=_int_field(raw, "n_layer", path, 12),
                    d_ff=4 * d if inner is None else _int_field(raw, "n_inner", path),
                    activation=ACTIVATIONS[act], norm="pre", positions="learned", qkv_bias=True,
                    tie_output=tied, output_bias=False, dropout=_prob_field(raw, "resid_pdrop", path, 0.1),
                    attention_dropout=_prob_field(raw, "attn_pdrop", path, 0.1),
                    norm_eps=float(eps), blocked_ids=tuple(blocked_ids))
    try:
        cfg.validate()
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return cfg


def hf_config(m, tok) -> dict:
    """A GPT-2 config.json for our model section ``m`` and its tokenizer's id map."""
    ids = {role: tok.specials[role] for role in ("sos", "eos", "pad")}
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": tok.model_vocab,
            "n_positions": m.max_len, "n_embd": m.d_model, "n_layer": m.layers, "n_head": m.heads,
            "n_inner": m.d_ff, "activation_function": OUR_ACTIVATIONS[m.activation],
            "layer_norm_epsilon": m.norm_eps, "resid_pdrop": m.dropout, "embd_pdrop": m.dropout,
            "attn_pdrop": m.attention_dropout, "tie_word_embeddings": m.tie_output,
            "bos_token_id": ids["sos"] if ids["sos"] is not None else ids["eos"], "eos_token_id": ids["eos"],
            "pad_token_id": ids["pad"], "initializer_range": 0.02, "scale_attn_weights": True,
            "use_cache": True, "dtype": "float32"}


def exportable(m, where: str) -> None:
    """GPT2LMHeadModel computes our gpt only with these settings; anything else is named."""
    wanted = {"arch": "gpt", "norm": "pre", "positions": "learned", "output_bias": False, "quant": "none"}
    for name, value in wanted.items():
        if getattr(m, name, None) != value:
            raise ConfigError(f"{where}: model.{name}={getattr(m, name, None)!r}; GPT-2 has {name} {value!r}, "
                              "so export-hf cannot write this model")
    if m.activation not in OUR_ACTIVATIONS:
        raise ConfigError(f"{where}: model.activation={m.activation!r} has no GPT-2 equivalent")


# -- the tensor table ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Entry:
    name: str  # GPT-2 tensor name (without the "transformer." prefix)
    path: tuple  # our variable path
    kind: str = "copy"  # copy | rows (vocabulary rows: wte) | head (lm_head: transposed, vocabulary columns)


def layout(m) -> list[Entry]:
    p = ("params",)
    out = [Entry("wte.weight", p + ("embed", "embedding"), "rows"),
           Entry("wpe.weight", p + ("pos_embed", "embedding"))]
    pairs = (("ln_1", "norm1"), ("attn.c_attn", "self_attn/qkv"), ("attn.c_proj", "self_attn/out"),
             ("ln_2", "norm3"), ("mlp.c_fc", "ffn/linear1"), ("mlp.c_proj", "ffn/linear2"))
    for i in range(m.layers):
        for hf, ours in pairs:
            where = p + (f"layers_{i}",) + tuple(ours.split("/"))
            weight = "scale" if hf.startswith("ln") else "kernel"
            out += [Entry(f"h.{i}.{hf}.weight", where + (weight,)), Entry(f"h.{i}.{hf}.bias", where + ("bias",))]
    out += [Entry("ln_f.weight", p + ("final_norm", "scale")), Entry("ln_f.bias", p + ("final_norm", "bias"))]
    if not m.tie_output:
        out.append(Entry("lm_head.weight", p + ("fc_out", "kernel"), "head"))
    return out


def expected_shapes(m, hf_vocab: int) -> dict:
    d, f = m.d_model, m.d_ff
    shapes = {"wte.weight": (hf_vocab, d), "wpe.weight": (m.max_len, d), "ln_f.weight": (d,), "ln_f.bias": (d,),
              "lm_head.weight": (hf_vocab, d)}
    per = {"ln_1.weight": (d,), "ln_1.bias": (d,), "ln_2.weight": (d,), "ln_2.bias": (d,),
           "attn.c_attn.weight": (d, 3 * d), "attn.c_attn.bias": (3 * d,), "attn.c_proj.weight": (d, d),
           "attn.c_proj.bias": (d,), "mlp.c_fc.weight": (d, f), "mlp.c_fc.bias": (f,),
           "mlp.c_proj.weight": (f, d), "mlp.c_proj.bias": (d,)}
    for i in range(m.layers):
        shapes.update({f"h.{i}.{k}": v for k, v in per.items()})
    return shapes


def check_tensors(sd: dict, m, hf_vocab: int, where: str) -> None:
    """Every tensor the config implies, of the shape it implies, and nothing else."""
    names = {e.name for e in layout(m)}
    missing = sorted(names - set(sd))
    unexpected = sorted(k for k in set(sd) - names if not BUFFERS.fullmatch(k) and k != "lm_head.weight")
    if missing or unexpected:
        what = (f"missing {', '.join(missing[:3])}" if missing else "") + \
            ("; " if missing and unexpected else "") + (f"unexpected {', '.join(unexpected[:3])}" if unexpected else "")
        raise CheckpointError(f"{where}: the weights do not match config.json ({what})")
    shapes = expected_shapes(m, hf_vocab)
    for name in sorted(names, key=lambda n: (len(n), n)):
        if tuple(sd[name].shape) != shapes[name]:
            raise CheckpointError(f"{where}: {name} has shape {tuple(sd[name].shape)}, but config.json "
                                  f"implies {shapes[name]}")
        if np.asarray(sd[name]).dtype.kind != "f":  # float16 / bfloat16 files were widened on reading
            raise CheckpointError(f"{where}: {name} holds {np.asarray(sd[name]).dtype} values; GPT-2's weights "
                                  "are floating point")
        if not np.isfinite(sd[name]).all():
            raise CheckpointError(f"{where}: {name} holds NaN or infinite values (a damaged or diverged "
                                  "checkpoint); it would generate nothing meaningful")


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree, path, value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def to_variables(sd: dict, m, tok) -> dict:
    """GPT-2's tensors (names without "transformer.") -> our variables (float32 numpy)."""
    rows = lambda a: np.concatenate([np.zeros((1,) + a.shape[1:], np.float32), a])[tok.to_hf + 1]
    variables: dict = {}
    for e in layout(m):
        value = np.asarray(sd[e.name], np.float32)
        if e.kind == "rows":  # our special ids without an HF id (index -1) read a zero row
            value = rows(value)
        elif e.kind == "head":
            value = np.ascontiguousarray(rows(value).T)
        _set(variables, e.path, value)
    return variables


def to_hf_arrays(variables: dict, m, tok) -> dict:
    """Our variables -> GPT-2's tensors (with the "transformer." prefix, as save_pretrained names them)."""
    out = {}
    for e in layout(m):
        if e.path[-1] == "bias" and "bias" not in _get(variables, e.path[:-1]):  # no q/k/v bias: GPT-2's is 0
            out[f"transformer.{e.name}"] = np.zeros(3 * m.d_model, np.float32)
            continue
        value = np.asarray(_get(variables, e.path), np.float32)
        if e.kind == "rows":
            value = value[tok.to_ours]
        elif e.kind == "head":
            value = value.T[tok.to_ours]
        out[e.name if e.kind == "head" else f"transformer.{e.name}"] = np.ascontiguousarray(value)
    return out


# -- the tokenizer ---------------------------------------------------------------------------------
def _special_id(raw: dict, name: str, path: str) -> Optional[int]:
    value = raw.get(name)
    if isinstance(value, list):  # some configs list several eos ids: the first is the one generate uses
        value = value[0] if value else None
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise CheckpointError(f"{path}: {name}={value!r} must be a token id")
    return value


def _generation_eos(model_dir: str) -> Optional[int]:
    """generation_config.json's eos_token_id (the first of a list), which transformers' generate
    uses over config.json's; None when there is no such file or field."""
    path = os.path.join(model_dir, "generation_config.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable ({str(e).splitlines()[0][:160]})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return _special_id(raw, "eos_token_id", path)


def hf_specials(raw: dict, tok, model_dir: str) -> dict:
    """Which HF ids play our pad, sos, eos and unk roles: config.json's eos / bos / pad ids,
    tokenizer_config.json's unk token; an id already taken keeps its first role (GPT-2's
    50256 is bos, eos and unk at once: it is our eos)."""
    from nety_jax.data.hf_tokenizer import read_special_tokens
    path = os.path.join(model_dir, CONFIG)
    named = read_special_tokens(os.path.join(model_dir, "tokenizer_config.json"))
    out, taken = {}, set()
    eos = _generation_eos(model_dir)  # what transformers' generate stops at, when it says
    eos = _special_id(raw, "eos_token_id", path) if eos is None else eos
    for role, hf_id in (("eos", eos), ("sos", _special_id(raw, "bos_token_id", path)),
                        ("pad", _special_id(raw, "pad_token_id", path)),
                        ("unk", tok.token_to_id(named["unk"]) if "unk" in named else None)):
        if hf_id is not None and hf_id not in taken:
            out[role] = hf_id
            taken.add(hf_id)
    return out


def read_tokenizer(model_dir: str, raw: dict):
    """tokenizer.json, or vocab.json + merges.txt (GPT-2's byte-level BPE), with its id map."""
    from nety_jax.data.hf_tokenizer import (HFTokenizer, byte_level_bpe, read_special_tokens,
                                            require_tokenizers)
    path = os.path.join(model_dir, "tokenizer.json")
    vocab, merges = os.path.join(model_dir, "vocab.json"), os.path.join(model_dir, "merges.txt")
    if os.path.isfile(path):
        tok = HFTokenizer.from_file(path, {}).tok
    elif os.path.isfile(vocab) and os.path.isfile(merges):
        named = read_special_tokens(os.path.join(model_dir, "tokenizer_config.json"))
        tok = byte_level_bpe(vocab, merges, sorted(set(named.values()) | {"<|endoftext|>"}))
    else:
        raise DataError(f"{model_dir}: no tokenizer (expected tokenizer.json, or vocab.json and merges.txt)")
    require_tokenizers()
    n = raw.get("vocab_size", 50257)
    if tok.get_vocab_size(with_added_tokens=True) > n:
        raise DataError(f"{model_dir}: the tokenizer has {tok.get_vocab_size(with_added_tokens=True)} ids, "
                        f"more than config.json's vocab_size={n}")
    return HFTokenizer(tok, hf_specials(raw, tok, model_dir), n, where=model_dir)


# -- whole directories -----------------------------------------------------------------------------
def load_hf(model_dir: str):
    """(Config, HFTokenizer, variables) of a HuggingFace GPT-2 directory; nothing is written."""
    from nety_jax.config import Config, DataConfig, DecodeConfig
    from nety_jax.models.hf_files import read_weights
    raw = read_hf_config(model_dir)
    where = os.path.join(model_dir, CONFIG)
    hf_vocab = _int_field(raw, "vocab_size", where, 50257)
    tok = read_tokenizer(model_dir, raw)
    m = model_config(raw, tok.vocab_size, tok.blocked_ids, where)
    sd = {k[len("transformer."):] if k.startswith("transformer.") else k: v
          for k, v in read_weights(model_dir).items()}
    check_tensors(sd, m, hf_vocab, model_dir)
    decode = DecodeConfig(max_new_tokens=min(DecodeConfig.max_new_tokens, m.max_len - 1))
    cfg = Config(model=m, data=DataConfig(tokenizer="hf", vocab_size=max(tok.vocab_size, 9)), decode=decode)
    return cfg.validate(), tok, to_variables(sd, m, tok)


def import_hf(model_dir: str, out: str, overwrite: bool = False) -> str:
    """Writes a run directory (config, hf tokenizer, step-0 weights) from a HuggingFace GPT-2
    directory, through the writers' guard (``runs/guard.py``: a new or empty directory, or an
    earlier import-hf output with ``overwrite``); on any error nothing is written."""
    from nety_jax.runs import guard
    from nety_jax.runs.files import write_run_config
    from nety_jax.runs.weights import write_weights
    with guard.output(out, "import-hf", overwrite) as tmp:  # checked before any work
        cfg, tok, variables = load_hf(model_dir)
        write_run_config(tmp, cfg)
        tok.save(tmp)
        write_weights(tmp, cfg, variables, 0, {"imported_from": os.path.abspath(model_dir)})
    return out


def export_hf(checkpoint: str, out: str, overwrite: bool = False) -> str:
    """A run directory -> a HuggingFace GPT-2 directory (config.json, model.safetensors,
    tokenizer.json, tokenizer_config.json; transformers derives the generation config from
    config.json), through the writers' guard
    (a new or empty directory, or an earlier export-hf output with ``overwrite``)."""
    from nety_jax.runs import guard
    with guard.output(out, "export-hf", overwrite) as tmp:  # checked before any work
        _export_into(checkpoint, tmp)
    return out


def _export_into(checkpoint: str, out: str) -> None:
    import jax
    from nety_jax.data.hf_tokenizer import HFTokenizer
    from nety_jax.models import get_model
    from nety_jax.models.hf_files import write_safetensors
    from nety_jax.runs.files import load_run_tokenizer, read_run_config
    from nety_jax.runs.weights import restore_inference_variables
    cfg = read_run_config(checkpoint)
    m = cfg.model
    exportable(m, checkpoint)
    tokenizer = load_run_tokenizer(checkpoint, cfg)
    if not isinstance(tokenizer, HFTokenizer):
        raise ConfigError(f"{checkpoint}: data.tokenizer={cfg.data.tokenizer!r}; export-hf writes a "
                          "HuggingFace tokenizer, so it needs a run trained with data.tokenizer: hf "
                          "(or imported with import-hf)")
    variables, _ = restore_inference_variables(checkpoint, cfg, get_model(m).abstract_variables())
    arrays = to_hf_arrays(jax.device_get(variables), m, tokenizer)
    write_safetensors(arrays, os.path.join(out, "model.safetensors"))
    _write_json(os.path.join(out, CONFIG), hf_config(m, tokenizer))
    write_tokenizer(tokenizer, out, m.max_len)


def _write_json(path: str, obj: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)


def write_tokenizer(tok, out: str, max_len: int) -> None:
    """tokenizer.json (the ``tokenizers`` file as it was) and a tokenizer_config.json that
    AutoTokenizer reads as a fast tokenizer with the special tokens of the id map."""
    with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(tok.tok.to_str())
    names = {role: tok.tok.id_to_token(i) for role, i in tok.specials.items() if i is not None}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len,
              "clean_up_tokenization_spaces": False, "add_prefix_space": False}
    for role, key in (("sos", "bos_token"), ("eos", "eos_token"), ("unk", "unk_token"), ("pad", "pad_token")):
        if role in names:
            config[key] = names[role]
    if "sos" not in names and "eos" in names:  # GPT-2: one token is bos and eos
        config["bos_token"] = names["eos"]
    _write_json(os.path.join(out, "tokenizer_config.json"), config)
