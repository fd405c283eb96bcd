"""scripts/gpu_check.sh end to end on this CPU (--platform cpu --tiny), so the one command a GPU
session runs cannot rot between the rare sessions that have a GPU."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPT = os.path.join(ROOT, "scripts", "gpu_check.sh")


def _run(args, tmp_path, **env):
    env = {**os.environ, "PYTHON": sys.executable, "NETY_GPU_SITE": str(tmp_path / "site"), **env}
    return subprocess.run(["bash", SCRIPT, *args], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=900)


@pytest.mark.slow
def test_the_gpu_check_runs_end_to_end_on_the_cpu(tmp_path):
    out = tmp_path / "out"
    # one test of tests/test_accelerator.py: the suite runs the file on the CPU itself
    done = _run([str(out), "--platform", "cpu", "--tiny"], tmp_path, NETY_GPU_BUDGET="100000",
                NETY_GPU_CHECK_TESTS="-k backend_is_the_expected")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["bench-gpu-xla-cublas.md", "bench-gpu.md", "bench-results-xla-cublas.json",
                                       "bench-results.json", "gpu_check.log", "tests.txt", "versions.txt"]
    variant = json.loads((out / "bench-results-xla-cublas.json").read_text())
    assert "train" in variant["gpt"] and "generate" not in variant["gpt"] and variant["generate"] == {}
    versions = (out / "versions.txt").read_text()
    assert "jax_backend        cpu" in versions and "flax" in versions and "torch" in versions
    assert "1 passed" in (out / "tests.txt").read_text()
    results = json.loads((out / "bench-results.json").read_text())
    assert results["skipped"] == [] and results["machine"]["platform"] == "cpu"
    train = {(r["config"], r["dtype"]): r for r in results["train"]["rows"]}
    assert set(train) == {("nety_parity.yaml", "float32"), ("base.yaml", "bfloat16")}
    parity = train[("nety_parity.yaml", "float32")]
    assert parity["ours"]["s_per_step"] > 0 and parity["NETY PyTorch"]["s_per_step"] > 0
    assert parity["ratio_vs_torch"] == pytest.approx(parity["NETY PyTorch"]["s_per_step"] / parity["ours"]["s_per_step"])
    assert [r["batch"] for r in results["generate"]["rows"]] == [1, 4]
    gpt = results["gpt"]
    assert gpt["train"]["ratio_vs_eager"] > 0 and [r["batch"] for r in gpt["generate"]] == [1, 4]
    assert set(results["profile"]) == {"gpt train step", "gpt generate, batch 4", "hybrid train step (parity, bfloat16)",
                                       "hybrid generate, batch 4 (bfloat16)"}
    assert all(p["lines"] and p["wall_ms"] > 0 for p in results["profile"].values())
    table = (out / "bench-gpu.md").read_text()
    for header in ("| hybrid train step |", "| hybrid generate 8 tokens |", "| GPT-2 124M train step",
                   "| GPT-2 124M generate 8 tokens", "Profile: gpt train step"):
        assert header in table, header


@pytest.mark.parametrize("args,message", [
    ([], "usage: scripts/gpu_check.sh OUT_DIR"),
    (["out", "--platform", "tpu"], "--platform must be gpu or cpu, got 'tpu'"),
    (["out", "--fast"], "unknown option --fast"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, args, message):
    done = _run([str(tmp_path / a) if a == "out" else a for a in args], tmp_path)
    assert done.returncode == 2 and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_missing_package_fails_fast_naming_it(tmp_path):
    code = ("import sys; sys.modules['tensorboardX'] = None; sys.argv = ['gpu_env', 'check', '--platform', 'cpu'];"
            "sys.path.insert(0, 'scripts'); import gpu_env; gpu_env.main()")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "gpu_check: error: Python package tensorboardX cannot be imported" in done.stderr
    assert "make gpu-wheels" in done.stderr


def test_only_the_wheels_this_python_lacks_are_installed(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import gpu_env
    for name in ("numpy-9.9.9-py3-none-any.whl", "no_such_package_xyz-1.0-py3-none-any.whl", "notes.txt"):
        (tmp_path / name).write_text("")
    assert gpu_env.missing_wheels(str(tmp_path)) == [str(tmp_path / "no_such_package_xyz-1.0-py3-none-any.whl")]
