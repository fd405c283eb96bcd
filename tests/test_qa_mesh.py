"""QA: the mesh's batch axes (train.mesh_rules) must divide the batch: one line, not a traceback."""
from conftest import GPT_TINY, run_main


def test_a_batch_rule_whose_axes_do_not_divide_the_batch_is_one_line(tmp_path):
    """`batch=tensor` over tensor=4 with a batch of 6 passed the data x fsdp check (1 x 1) and
    failed inside JAX (IndivisibleError) at the first step."""
    result = run_main("train", "--config", GPT_TINY, "--workdir", tmp_path / "run", "--no-progress",
                      "--parallel", "mesh", "--set", "train.mesh_tensor=4", "--set", "train.batch_size=6",
                      "--set", "train.mesh_rules=[batch=tensor]", "--steps", "2", "--set", "train.warmup_steps=0")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "train.batch_size=6 must be divisible by the batch's mesh axes" in result.stderr
    assert "train.mesh_tensor=4" in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
