"""Every public argument of the Python API (Pretrained, the exported model) of the wrong type or range
is a NetyError naming it: methods x arguments x bad values. Checks come before any compute."""
import math

import pytest

from nety_jax.errors import NetyError
from nety_jax.serving.settings import RUNTIME

BAD = {  # argument -> (values, what the message must name)
    "texts": ([3, None, [3], [""], ["   "], ["Le \ud800"], [b"bytes"]], r"prompt|texts"),
    "seed": ([1.5, "3", -1, 2 ** 63, True, None, [1.5], [1, 2, 3]], "seed"),
    "num_samples": ([0, -1, 1.5, "2", True, None], "num_samples"),
    "with_prompt": (["yes", 1, None], "with_prompt"),
    "batch_size": ([0, -2, 1.5, "2", True], "batch_size"),
    "temperature": ([-1, "hot", math.nan, math.inf, 101, [0.1, 0.2, 0.3]], "temperature"),
    "top_k": ([-1, 1.5, "3", True], "top_k"),
    "top_p": ([0, 1.5, math.nan, "x"], "top_p"),
    "max_new_tokens": ([0, -3, 1.5, "5", 10 ** 6], "max_new_tokens"),
    "beam_size": ([0, 1.5, "2"], "beam_size"),
    "no_such_setting": ([1], "no_such_setting"),
    "chunk": ([0, -1, 1.5, "2", None], "chunk"),
    "top_k_words": ([0, -1, "3", 1.5, None, 10 ** 9], "top_k"),
    "text": ([3, None, "", "  ", "a\udc80"], "text"),
    "first_row": ([-1, 1.5, "0"], "first_row"),
    "batch": ([None, [[5, 6]], {}, {"tokens": [[5.5, 6.0]]}, {"tokens": [5, 6]}, {"tokens": [[5, 10 ** 6]]},
               {"tokens": [[-1, 5]]}, {"tokens": "abc"}], r"batch"),
}
METHODS = {  # method -> the arguments it takes (besides what the call needs to be valid)
    "generate": ["texts", "seed", "num_samples", "with_prompt", "batch_size", "temperature", "top_k", "top_p",
                 "max_new_tokens", "beam_size", "no_such_setting"],
    "generate_ids": ["texts", "seed", "num_samples", "temperature", "top_k", "top_p", "max_new_tokens"],
    "stream": ["texts", "seed", "chunk", "temperature", "top_k", "top_p", "max_new_tokens"],
    "predict_next": ["text", "top_k_words"],
    "exported.generate": ["texts", "seed", "num_samples", "with_prompt", "batch_size", "temperature", "top_k",
                          "top_p", "max_new_tokens", "beam_size", "no_such_setting"],
    "exported.generate_ids": ["first_row"],
    "logits": ["batch"],
}
CASES = [(m, arg, v) for m, args in METHODS.items() for arg in args for v in BAD[arg][0]]


@pytest.fixture(scope="module")
def models(trained_gpt):
    """The run and an exported model built around the same config and tokenizer (the checks run
    before the artifact would be called, so no export is compiled here)."""
    from nety_jax.serving.export import ExportedModel
    from nety_jax.serving.pretrained import load_pretrained
    model = load_pretrained(trained_gpt[0])
    exported = object.__new__(ExportedModel)
    exported.config, exported.tokenizer, exported.prompts = model.config, model.tokenizer, model.model.prompts
    exported.info = {"options": list(RUNTIME) + ["seed"], "max_new_tokens": 24, "batch": "symbolic",
                     "defaults": {}}
    return model, exported


def _call(models, method, arg, value):
    model, exported = models
    name = {"top_k_words": "top_k"}.get(arg, arg)
    if method == "predict_next":
        kwargs = {"text": "Le chat", "top_k": 3, name: value}
        return model.predict_next(**kwargs)
    if method == "logits":
        return model.logits(value)
    if method == "exported.generate_ids":
        import numpy as np
        return exported.generate_ids(np.ones((1, 2), np.int32), np.full((1,), 2, np.int32), **{name: value})
    target = exported if method.startswith("exported.") else model
    kwargs = {"texts": ["Le chat", "La nuit"], name: value}
    if method != "stream" and name != "max_new_tokens":
        kwargs.setdefault("max_new_tokens", 2)
    out = getattr(target, method.removeprefix("exported."))(**kwargs)
    return list(out) if method == "stream" else out


@pytest.mark.parametrize("method, arg, value", CASES, ids=[f"{m}-{a}-{v!r}"[:60] for m, a, v in CASES])
def test_a_bad_argument_is_a_netyerror_naming_it(models, method, arg, value):
    with pytest.raises(NetyError) as error:
        _call(models, method, arg, value)
    assert __import__("re").search(BAD[arg][1], str(error.value)), str(error.value)
    assert "\n" not in str(error.value)


def test_empty_and_single_inputs_are_answered(models):
    model, _ = models
    assert model.generate([]) == [] and list(model.stream([])) == []
    chunks = list(model.stream(["Le chat"], chunk=1, max_new_tokens=3, temperature=0.0))
    assert 1 <= len(chunks) <= 4 and chunks[-1].shape[0] == 1
    import numpy as np
    per_row = model.generate(["Le chat", "La nuit"], temperature=np.array([0.0, 0.0], np.float32),
                             top_k=np.array([1, 1], np.int64), max_new_tokens=2, seed=np.int64(3))
    assert per_row == model.generate(["Le chat", "La nuit"], temperature=0.0, top_k=1, max_new_tokens=2)
    assert model.logits({"tokens": [[5, 6, 7]]}).shape == (1, 3, model.model.cfg.vocab_size)


def test_train_refuses_arguments_of_the_wrong_type(tmp_path):
    from nety_jax.config import load_config
    from nety_jax.training.loop import train
    from conftest import GPT_TINY
    cfg = load_config(GPT_TINY)
    for args, name in (((cfg.to_dict(), str(tmp_path)), "cfg"), ((cfg, None), "workdir"), ((cfg, 3), "workdir"),
                       ((cfg, str(tmp_path), 5), "data"), ((cfg, str(tmp_path), [None]), "data")):
        with pytest.raises(NetyError, match=name):
            train(*args, progress=False, log=lambda *_: None)
    assert not list(tmp_path.iterdir())  # refused before anything is written
