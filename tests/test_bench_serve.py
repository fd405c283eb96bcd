"""The option logic of scripts/bench_serve.py (no server started, no timing): the third server
of ``--old-dynamic``, the ratios against both dynamic servers, the rotated order of the rounds,
the child command that serves another tree, and the view of a run an older tree can load."""
import os
import sys

import pytest
import yaml

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import bench_serve as B  # noqa: E402


def _tree(path):
    os.makedirs(path / "nety_jax" / "serving")
    (path / "nety_jax" / "serving" / "server.py").write_text("")
    return str(path)


def test_old_dynamic_is_checked_before_anything_starts(tmp_path):
    tree = _tree(tmp_path / "issue-day")
    ok = B.parser().parse_args(["--model", "gpt", "--old-dynamic", tree])
    assert ok.old_dynamic == tree and B.check_args(ok) == ""
    for extra in (["--against", tree], ["--sweep", "8,16"], ["--only-flood", "--flood", "10"]):
        message = B.check_args(B.parser().parse_args(["--old-dynamic", tree] + extra))
        assert message.startswith("--old-dynamic adds a server") and "\n" not in message
    empty = str(tmp_path / "empty")
    os.makedirs(empty)
    for flag in ("--old-dynamic", "--against"):
        message = B.check_args(B.parser().parse_args([flag, empty]))
        assert message.startswith(f"{flag}={empty}: not a nety-jax tree") and "git archive" in message


def test_ratios_per_round_against_both_dynamic_servers():
    old = B.old_label("/tmp/issue-day/")
    assert old == "dynamic (issue-day)"
    windows = {"dynamic": [{"tokens_per_s": 100.0}, {"tokens_per_s": 200.0}],
               "continuous": [{"tokens_per_s": 300.0}, {"tokens_per_s": 500.0}],
               old: [{"tokens_per_s": 50.0}, {"tokens_per_s": 125.0}]}
    ratios = B.round_ratios(windows, old)
    assert ratios == {"continuous / dynamic": [3.0, 2.5], f"continuous / {old}": [6.0, 4.0],
                      f"dynamic / {old}": [2.0, 1.6]}
    lines = B.ratio_lines(ratios).splitlines()
    assert lines[1] == (f"continuous / {old} completed tokens/s at saturation: 6.00x (median of 2 rounds: "
                        "6.00x, 4.00x)")
    # without a third server: the one ratio, under its usual name
    del windows[old]
    assert B.round_ratios(windows) == {"continuous / dynamic": [3.0, 2.5]}


def test_rounds_rotate_so_no_server_is_always_first():
    names = ["dynamic", "continuous", "dynamic (issue-day)"]
    orders = [B.round_order(names, r) for r in range(4)]
    assert orders[0] == names and orders[3] == names
    assert [o[0] for o in orders[:3]] == names  # each server first once in three rounds
    assert B.round_order(["a", "b"], 1) == ["b", "a"]  # two servers: reversed every other round


def test_a_child_serves_another_tree_through_this_harness(tmp_path):
    tree = _tree(tmp_path / "old")
    argv, env, cwd = B.server_command("runs/demo", "dynamic", 1234, 8, 16, tree)
    assert argv[1] == os.path.abspath(B.__file__)  # this file's --child, whatever the tree's own script
    assert argv[argv.index("--checkpoint") + 1] == os.path.abspath("runs/demo")  # the tree may have no runs/
    assert env["PYTHONPATH"] == tree and cwd == tree
    assert [argv[argv.index(f) + 1] for f in ("--batching", "--port", "--slots", "--queue")] == ["dynamic", "1234",
                                                                                                 "8", "16"]


def test_run_view_leaves_out_only_the_named_training_fields(tmp_path):
    run = tmp_path / "run"
    os.makedirs(run / "checkpoints")
    (run / "tokenizer.json").write_text("{}")
    config = {"model": {"arch": "gpt", "remat": "kept"}, "train": {"steps": 2, "remat": "none", "remat_scan": "layer"}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    view = B.run_view(str(run), ["remat", "remat_scan"], yaml)
    assert sorted(os.listdir(view)) == ["checkpoints", "config.yaml", "tokenizer.json"]
    assert os.path.realpath(os.path.join(view, "checkpoints")) == os.path.realpath(run / "checkpoints")
    assert yaml.safe_load(open(os.path.join(view, "config.yaml"))) == {"model": {"arch": "gpt", "remat": "kept"},
                                                                      "train": {"steps": 2}}
    assert yaml.safe_load((run / "config.yaml").read_text()) == config  # the run itself untouched


@pytest.mark.parametrize("error, field", [("/r/config.yaml: unknown field train.remat", "remat"),
                                          ("/r/config.yaml: unknown field model.rope", None)])
def test_only_an_unknown_train_field_is_left_out(error, field):
    found = B.UNKNOWN_FIELD.search(error)
    assert (found.group(2) if found else None) == field


def test_a_server_child_runs_as_the_command_does(monkeypatch):
    """`nety-jax serve` calls runtime.keep_host_memory before JAX starts (malloc settings, and on
    the CPU programs run in the calling thread); the bench's servers did not, so they measured
    another dispatch mode than the shipped server's. The child now does it first."""
    from nety_jax import runtime
    calls = []
    monkeypatch.setattr(runtime, "keep_host_memory", lambda mode=None: calls.append("malloc"))
    monkeypatch.setattr(B, "child", lambda args: calls.append("serve") or 0)
    monkeypatch.setattr(sys, "argv", ["bench_serve.py", "--child", "--checkpoint", "run", "--batching",
                                      "dynamic", "--port", "1"])
    assert B.main() == 0 and calls == ["malloc", "serve"]


def test_admit_batch_reaches_the_continuous_servers_and_is_checked(monkeypatch):
    """``--admit-batch N``: at most the fewest slots a server gets (a child refused it and never
    started); passed to the children through their environment."""
    ok = B.parser().parse_args(["--slots", "8", "--admit-batch", "4"])
    assert B.check_args(ok) == ""
    for argv, fewest in ((["--slots", "4", "--admit-batch", "5"], 4),
                         (["--sweep", "8,2", "--admit-batch", "4"], 2), (["--admit-batch", "-1"], 32)):
        message = B.check_args(B.parser().parse_args(argv))
        assert message.startswith("--admit-batch=") and f"fewest slots ({fewest})" in message, message
    monkeypatch.setenv("NETY_BENCH_ADMIT_BATCH", "4")
    argv, env, _ = B.server_command("runs/demo", "continuous", 1234, 8, 8)
    assert env["NETY_BENCH_ADMIT_BATCH"] == "4"
