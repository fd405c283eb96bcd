"""QA round 3: resuming a run with settings it cannot honour."""
import shutil

from conftest import GPT_TINY, run_main


def test_a_resume_with_another_validation_split_is_refused(trained_gpt, tmp_path):
    """`--set data.val_fraction=0.5` on a run held out with 0.1 resumed: the new validation split held
    lines already trained on (its loss, and the best checkpoint chosen by it, flattered the model),
    while another train.seed, which also moves the split, was refused. Refused the same way now."""
    workdir = tmp_path / "run"
    shutil.copytree(trained_gpt[0], workdir)
    config = (workdir / "config.yaml").read_text()
    result = run_main("train", "--config", GPT_TINY, "--workdir", workdir, "--steps", "201", "--no-progress",
                      "--set", "data.val_fraction=0.5")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "data.val_fraction: saved 0.1, requested 0.5 (the validation split depends on it)" in result.stderr
    assert (workdir / "config.yaml").read_text() == config
    result = run_main("train", "--config", GPT_TINY, "--workdir", workdir, "--steps", "200", "--no-progress",
                      "--set", "data.val_fraction=0.1")  # the default, spelled out: the same split
    assert result.returncode == 0, result.stderr


def test_a_checkpoint_write_failing_in_the_background_is_one_line(tmp_path, caplog):
    """A disk that filled during an asynchronous checkpoint write: Orbax's background threads logged
    the failure through absl with its whole traceback, three times, before the training's own
    one-line error (seen on a full tmpfs). A training's checkpoint manager makes each one line,
    said once. (Orbax's log call is reproduced here; the real one needs a full disk.)"""
    import logging

    from nety_jax.config import load_config
    from nety_jax.runs import checkpoints as ckpt
    ckpt.make_manager(str(tmp_path / "run"), load_config(GPT_TINY)).close()
    error = ValueError('RESOURCE_EXHAUSTED: Error writing "params.embed/0" in OCDBT database\nmore detail')
    with caplog.at_level(logging.ERROR, logger="absl"):
        for thread in ("array_type_handler", "write_metadata_after_commits"):
            logging.getLogger("absl").error("[process=0][thread=%s] _SignalingThread.run() raised an exception: %s",
                                            thread, error, exc_info=(ValueError, error, None))
        logging.getLogger("absl").error("an unrelated error")  # left alone
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ['a checkpoint write failed in the background: RESOURCE_EXHAUSTED: Error writing '
                        '"params.embed/0" in OCDBT database', "an unrelated error"], messages
    assert not any(r.exc_info for r in caplog.records)
