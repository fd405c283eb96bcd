"""The task objects (nety_jax/tasks/): one per task, reached from every architecture (that only
tasks/ names a task: tests/test_layering.py)."""
import numpy as np
import pytest

from conftest import GPT_TINY, RNN_LM, TINY


@pytest.mark.parametrize("config,name,option,continues",
                         [(TINY, "seq2seq", "--data", False), (GPT_TINY, "lm", "--text", True),
                          (RNN_LM, "lm", "--text", True)])
def test_every_architecture_has_its_task(config, name, option, continues):
    from nety_jax.config import load_config
    from nety_jax.models import get_model
    from nety_jax.tasks import get_task
    model = get_model(load_config(config).model)
    assert model.task is get_task(name)
    assert (model.task.data_option, model.task.continues_text) == (option, continues)
    assert model.serving_signature()["task"] == name
    assert model.prompts.kind == ("prefix" if continues else "source")


def test_validation_fraction_is_the_task_default_unless_set(tiny_cfg):
    from nety_jax.tasks import get_task
    assert get_task("seq2seq").val_fraction(tiny_cfg.data) == 0.05
    assert get_task("lm").val_fraction(tiny_cfg.data) == 0.1
    from nety_jax.config import load_config
    assert get_task("lm").val_fraction(load_config(TINY, ["data.val_fraction=0"]).data) == 0.0


def test_a_chat_becomes_the_task_prompt():
    from nety_jax.tasks import get_task
    messages = [("system", "Sois bref."), ("user", "bonjour"), ("assistant", "salut"), ("user", "ça va ?"),
                ("user", "  ")]
    assert get_task("seq2seq").chat_prompt(messages) == "ça va ?"
    assert get_task("lm").chat_prompt(messages) == "Sois bref.\nbonjour\nsalut\nça va ?"


def test_seq2seq_read_splits_pairs_with_the_seed(tmp_path, tiny_cfg):
    from nety_jax.errors import DataError
    from nety_jax.tasks import get_task
    path = tmp_path / "pairs.tsv"
    pairs = [(f"question {i}", f"réponse {i}") for i in range(40)]
    path.write_text("".join(f"{a}\t{b}\n" for a, b in pairs) + "bad line\n", encoding="utf-8")
    task = get_task("seq2seq")
    corpus = task.read(tiny_cfg, [str(path)], skip_bad=True)
    order = np.random.default_rng(tiny_cfg.train.seed).permutation(40)  # the split, computed here
    assert corpus.val == [pairs[i] for i in order[:2]] and corpus.train == [pairs[i] for i in order[2:]]
    assert corpus.texts == [t for p in corpus.train for t in p]
    assert (corpus.skipped, corpus.first_error.startswith(f"{path}:41:")) == (1, True)
    with pytest.raises(DataError, match="one pairs file"):
        task.read(tiny_cfg, [str(path), str(path)], skip_bad=False)


def test_lm_read_holds_out_the_last_lines(tmp_path):
    from nety_jax.config import load_config
    from nety_jax.tasks import get_task
    cfg = load_config(GPT_TINY)
    path = tmp_path / "t.txt"
    path.write_text("".join(f"ligne {i}\n\n" for i in range(20)), encoding="utf-8")
    corpus = get_task("lm").read(cfg, [str(path)], skip_bad=False)
    assert corpus.train == [f"ligne {i}" for i in range(18)] == corpus.texts
    assert corpus.val == ["ligne 18", "ligne 19"]


def test_wrong_data_option_and_command_name_the_task_to_use():
    from nety_jax.errors import NetyError
    from nety_jax.tasks import check_data_option, get_task, require_continuation
    s2s, lm = get_task("seq2seq"), get_task("lm")
    check_data_option(s2s, "--data", "hybrid")
    check_data_option(lm, "--text", "gpt")
    with pytest.raises(NetyError, match=r"^--text takes text files for a language model \(model.arch gpt or "
                                        r"rnn_lm\); model.arch=hybrid is a seq2seq model: use --data$"):
        check_data_option(s2s, "--text", "hybrid")
    with pytest.raises(NetyError, match="model.arch=rnn_lm is a language model: use --text$"):
        check_data_option(lm, "--data", "rnn_lm")
    require_continuation(lm, "complete")
    with pytest.raises(NetyError, match=r"^predict-next continues a text: it needs a language model "
                                        r"\(model.arch gpt or rnn_lm\); this is a seq2seq model: use generate$"):
        require_continuation(s2s, "predict-next")


def test_exported_signature_names_its_task():
    from nety_jax.errors import CheckpointError
    from nety_jax.tasks import get_task, task_of_signature
    assert task_of_signature({"task": "lm"}) is get_task("lm")
    assert task_of_signature({}) is get_task("seq2seq")  # exported before the field existed
    with pytest.raises(CheckpointError, match=r"^d/export.json: signature.task='vision' is not a task"):
        task_of_signature({"task": "vision"}, "d/export.json")
