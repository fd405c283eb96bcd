"""A checkpoint written on one mesh is read on any other: a tiny GPT trained on 8 fake devices
(fsdp=4 x tensor=2, a process of its own) generates the same greedy tokens restored in a fresh
1-device process, on this process's first device, tensor-parallel over 2 and 4 devices, through an
export and through the server; and it resumes training on 4 devices (fsdp=4) where a 1-device run
left off, equal to the 8-device run."""
import dataclasses
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import GPT_TINY, QUIET, ROOT, TEST_XLA_FLAGS, run_main
from nety_jax.config import load_config
from nety_jax.errors import ConfigError

PROMPTS = ["le chat", "il était une fois"]
NEW = 6  # greedy tokens per prompt
# Adam with eps=1e-3, a constant rate, no warmup: the update is continuous in the gradient, so
# meshes that only sum in another order agree within 1e-5 (tests/test_mesh.py). A small rate keeps
# the model near its initialisation, where greedy tokens still vary from step to step.
TRAIN = ["train.eps=1e-3", "train.warmup_steps=0", "train.schedule=constant", "train.batch_size=8",
         "train.learning_rate=1e-4", "train.checkpoint_every=2", "train.eval_every=1000",
         "train.log_every=1", "model.layers=1", "data.vocab_size=256"]  # every split divides 256
MESH8 = ["train.parallel=mesh", "train.mesh_data=1", "train.mesh_fsdp=4", "train.mesh_tensor=2"]


def _env(devices: int) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} {TEST_XLA_FLAGS}"}
    for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(key, None)
    return env


def _cli(devices: int, *argv) -> str:
    done = subprocess.run([sys.executable, "-m", "nety_jax.cli", *map(str, argv)], cwd=ROOT, env=_env(devices),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


@pytest.fixture(scope="module")
def mesh_run(tmp_path_factory):
    """(run directory trained 4 steps on 8 devices, fsdp=4 x tensor=2; what a fresh 1-device
    process generates from it)."""
    workdir = tmp_path_factory.mktemp("mesh8") / "run"
    _cli(8, "train", "--config", GPT_TINY, "--workdir", workdir, "--steps", 4, "--no-progress",
         *_sets(TRAIN + MESH8))
    out = _cli(1, "generate", "--checkpoint", workdir, "--temperature", 0, "--max-new-tokens", NEW,
               *[a for p in PROMPTS for a in ("--prompt", p)])
    return str(workdir), out


def _replies(model) -> list[str]:
    return [r[0] for r in model.generate(PROMPTS, temperature=0.0, max_new_tokens=NEW)]


def _printed(replies: list[str]) -> str:
    """`nety-jax generate`'s output for several prompts."""
    return "".join(f"> {p}\n{r or '(empty reply)'}\n" for p, r in zip(PROMPTS, replies))


def test_a_mesh_checkpoint_generates_alike_on_one_device_and_tensor_parallel(mesh_run):
    from nety_jax.serving.pretrained import load_pretrained
    from nety_jax.training.mesh import bytes_per_device
    workdir, fresh = mesh_run
    one = load_pretrained(workdir)
    assert _printed(_replies(one)) == fresh  # this process's first device = a fresh 1-device process
    expected = one.generate_ids(PROMPTS, temperature=0.0, max_new_tokens=NEW)["tokens"]
    assert len({tuple(row) for row in expected}) == len(PROMPTS)  # the prompts lead somewhere different
    whole = bytes_per_device(one.variables)
    model = load_pretrained(workdir, mesh_tensor=4)  # (over 2 devices: the server's test)
    kernel = model.variables["params"]["layers_0"]["ffn"]["linear1"]["kernel"]  # (embed, mlp)
    assert len(kernel.sharding.device_set) == 4 and kernel.addressable_shards[0].data.shape == (64, 64)
    assert bytes_per_device(model.variables) < whole / 4 * 1.1  # the norms and biases stay whole
    got = model.generate_ids(PROMPTS, temperature=0.0, max_new_tokens=NEW)["tokens"]
    np.testing.assert_array_equal(got, expected)


def test_a_mesh_checkpoint_exports_and_serves_tensor_parallel_alike(mesh_run, tmp_path):
    from fastapi.testclient import TestClient
    from nety_jax.serving.engine import PretrainedBackend
    from nety_jax.serving.export import export_run, load_exported
    from nety_jax.serving.pretrained import load_pretrained
    from nety_jax.serving.server import create_app
    workdir, fresh = mesh_run
    export_run(workdir, str(tmp_path / "export"))
    assert _printed(_replies(load_exported(str(tmp_path / "export")))) == fresh
    model = load_pretrained(workdir, mesh_tensor=2)
    app = create_app(PretrainedBackend(model, None), "gpt", slots=2, chunk=4)
    with TestClient(app) as client:
        replies = [client.post("/v1/completions", json={"model": "gpt", "prompt": p, "max_tokens": NEW,
                                                        "temperature": 0}) for p in PROMPTS]
        cache = jax.tree_util.tree_leaves(app.state.server.engine.runner.state.cache)
    specs = [tuple(c.sharding.spec) for c in cache if c.ndim == 4]  # keys and values: (slots, heads, length, dim)
    assert specs and all(s[:2] == (None, "tensor") for s in specs), specs  # split by heads, as the kernels
    assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
    # a completion's text continues its prompt (a first word's space kept); generate's reply is decoded alone
    assert _printed([r.json()["choices"][0]["text"].removeprefix(" ") for r in replies]) == fresh


def test_a_one_device_checkpoint_resumes_training_on_a_mesh(mesh_run, tmp_path):
    """2 steps on one device, then 2 more on 4 devices (fsdp=4): the parameters of the 8-device
    run's 4 steps, within 1e-5."""
    from nety_jax.serving.pretrained import load_pretrained
    from nety_jax.training.loop import train
    workdir = str(tmp_path / "run")
    train(load_config(GPT_TINY, TRAIN + ["train.steps=2"]), workdir, **QUIET)
    logs = []
    train(load_config(GPT_TINY, TRAIN + ["train.steps=4", "train.parallel=mesh", "train.mesh_fsdp=4"]), workdir,
          progress=False, log=logs.append)
    assert any("resumed from" in line and "at step 2" in line for line in logs), logs
    want = jax.tree_util.tree_leaves(load_pretrained(mesh_run[0]).variables)
    got = jax.tree_util.tree_leaves(load_pretrained(workdir).variables)
    assert max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(want, got)) < 1e-5


@pytest.mark.parametrize("fixture", ["trained_run", "trained_rnn_lm"])
def test_tensor_parallel_generation_of_the_other_architectures(fixture, request):
    """The hybrid (its recurrent encoder's gates split too) and the RNN LM: greedy tokens over 2
    devices equal one device's (the GPT: the tests above)."""
    from nety_jax.serving.pretrained import load_pretrained
    workdir = request.getfixturevalue(fixture)
    workdir = workdir[0] if isinstance(workdir, tuple) else workdir
    tokens = lambda model: model.generate_ids(PROMPTS, temperature=0.0, max_new_tokens=NEW)["tokens"]
    split = load_pretrained(workdir, mesh_tensor=2)
    assert any(len(x.sharding.device_set) == 2 and not x.sharding.is_fully_replicated
               for x in jax.tree_util.tree_leaves(split.variables))
    np.testing.assert_array_equal(tokens(split), tokens(load_pretrained(workdir)))


def test_weights_too_large_for_a_device_are_refused_with_the_split_that_fits(mesh_run, tmp_path):
    from nety_jax.config import save_config
    from nety_jax.serving.pretrained import load_pretrained
    workdir = str(tmp_path / "run")
    shutil.copytree(mesh_run[0], workdir)
    cfg = load_config(os.path.join(workdir, "config.yaml"))
    whole = sum(x.nbytes for x in jax.tree_util.tree_leaves(load_pretrained(workdir).variables))
    # room for 60% of the weights: half of them per device fits
    save_config(cfg.replace(train=dataclasses.replace(cfg.train, memory_limit_gb=0.6 * whole / 2 ** 30)),
                os.path.join(workdir, "config.yaml"))
    with pytest.raises(ConfigError, match=r"weights alone need .* per device on 1 device\(s\), more than "
                                          r".*train.memory_limit_gb.*: split them with --mesh-tensor 2"):
        load_pretrained(workdir)
    split = load_pretrained(workdir, mesh_tensor=2).variables["params"]["fc_out"]["kernel"]
    assert split.addressable_shards[0].data.shape == (64, 128)  # (embed, vocab): half the vocabulary each
    with pytest.raises(ConfigError, match=r"--mesh-tensor=8: this process has 4 device\(s\)"):
        load_pretrained(workdir, mesh_tensor=8)
    done = run_main("generate", "--checkpoint", workdir, "--prompt", "le", "--mesh-tensor", "0")
    assert done.returncode == 2, done
    assert done.stderr.strip() == "nety-jax: error: --mesh-tensor must be an integer >= 1, got 0", done.stderr
    done = run_main("generate", "--exported", workdir, "--prompt", "le", "--mesh-tensor", "2")
    assert done.returncode == 2 and "--mesh-tensor needs --checkpoint" in done.stderr, done.stderr


# -- issue 28's meshes on 8 devices, and the 2-process job ------------------------------------------
EIGHT = r'''
import json, sys
import jax, numpy as np
from nety_jax.config import load_config
from nety_jax.models import get_model
from nety_jax.training import mesh as meshlib
from nety_jax.training.parallel import Runner

def train(path, overrides):
    cfg = load_config(path, overrides)
    model = get_model(cfg.model)
    runner = Runner(cfg, model)
    state = runner.place_state(runner.create_state(model, cfg.train, jax.random.PRNGKey(0)))
    rng = np.random.default_rng(0)
    for _ in range(2):
        batch = {k: rng.integers(1, 9, x.shape).astype(np.int32) if k.endswith("_len") else
                 rng.integers(0, model.cfg.vocab_size, x.shape).astype(np.int32)
                 for k, x in model.example_batch(8, 8).items()}
        state, _ = runner.train(state, batch)
    return state

out = {}
for name, path, sizes, mesh in json.loads(sys.argv[1]):
    ref = train(path, sizes + ["train.parallel=none"])
    got = train(path, sizes + ["train.parallel=mesh"] + mesh)
    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
               for a, b in zip(jax.tree_util.tree_leaves(ref.params), jax.tree_util.tree_leaves(got.params)))
    shrink = meshlib.bytes_per_device((ref.params, ref.opt_state)) / meshlib.bytes_per_device((got.params, got.opt_state))
    out[name] = [diff, shrink]
print(json.dumps(out))
'''


@pytest.mark.slow
def test_issue_meshes_on_8_devices_train_the_one_device_parameters_in_shards():
    """Issue 28's meshes on 8 fake devices (tests/test_mesh.py runs smaller ones on the suite's 4),
    one per architecture: N steps give the parameters of one device within 1e-5, and the state per
    device shrinks as 1/(fsdp x tensor) within 10%."""
    import json
    from test_mesh import COMMON, MODELS
    cases = [("hybrid data=2,fsdp=2,tensor=2", *MODELS["hybrid"], ["train.mesh_data=2", "train.mesh_fsdp=2",
                                                                    "train.mesh_tensor=2"], 4),
             ("gpt fsdp=8", *MODELS["gpt"], ["train.mesh_data=1", "train.mesh_fsdp=8"], 8),
             ("rnn_lm data=8", *MODELS["rnn_lm"], ["train.mesh_data=8"], 1)]
    arg = json.dumps([[name, path, COMMON + sizes, mesh] for name, path, sizes, mesh, _ in cases])
    done = subprocess.run([sys.executable, "-c", EIGHT, arg], cwd=ROOT, env=_env(8), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for name, *_, split in cases:
        diff, shrink = results[name]
        assert diff < 1e-5 and abs(shrink / split - 1) < 0.1, (name, diff, shrink)


def _two_processes(workdir, steps: int, kill_after_checkpoint: bool = False):
    """`nety-jax train` as a job of 2 processes x 2 devices on a (data=1, fsdp=2, tensor=2) mesh:
    fsdp spans the processes, tensor each one's devices."""
    import signal
    import socket
    import time
    from nety_jax.runs.checkpoints import steps_on_disk
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [sys.executable, "-m", "nety_jax.cli", "train", "--config", GPT_TINY, "--workdir", str(workdir),
            "--steps", str(steps), "--no-progress",
            *_sets(TRAIN + ["train.parallel=mesh", "train.mesh_data=1", "train.mesh_fsdp=2", "train.mesh_tensor=2"])]
    procs = [subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**_env(2), "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                                   "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)}) for i in range(2)]
    if kill_after_checkpoint:  # kill -9 both once a checkpoint is complete
        deadline = time.time() + 300
        while time.time() < deadline and not steps_on_disk(str(workdir)) and procs[0].poll() is None:
            time.sleep(0.02)
        for p in procs:
            p.send_signal(signal.SIGKILL)
    outs = [p.communicate(timeout=300)[0] for p in procs]
    return [p.returncode for p in procs], outs


@pytest.mark.slow
def test_a_2_process_fsdp_job_killed_resumes_exactly_and_generates_in_one_process(tmp_path):
    """The 2-process job, kill -9 after its first checkpoint, then the same command: it resumes
    and ends with the parameters of an uninterrupted 1-device run (within 1e-5), and its
    checkpoint (each process wrote its own shards) restored in this one process generates that
    run's greedy tokens, on one device and tensor-parallel."""
    import signal
    from nety_jax.runs.checkpoints import steps_on_disk
    from nety_jax.serving.pretrained import load_pretrained
    from nety_jax.training.loop import train
    two, one = tmp_path / "two", str(tmp_path / "one")
    codes, outs = _two_processes(two, 8, kill_after_checkpoint=True)
    complete = steps_on_disk(str(two))
    assert codes == [-signal.SIGKILL] * 2 and complete and complete[-1] < 8, (codes, complete, outs)
    codes, outs = _two_processes(two, 8)
    assert codes == [0, 0] and all(f"at step {complete[-1]}" in o for o in outs), (complete, outs)
    train(load_config(GPT_TINY, TRAIN + ["train.steps=8"]), one, **QUIET)
    want, got = load_pretrained(one), load_pretrained(str(two))
    assert max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in
               zip(jax.tree_util.tree_leaves(want.variables), jax.tree_util.tree_leaves(got.variables))) < 1e-5
    tokens = lambda m: m.generate_ids(PROMPTS, temperature=0.0, max_new_tokens=NEW)["tokens"]
    np.testing.assert_array_equal(tokens(got), tokens(want))
    np.testing.assert_array_equal(tokens(load_pretrained(str(two), mesh_tensor=2)), tokens(want))


def test_an_axis_a_dimension_cannot_take_goes_to_the_next_sharded_one():
    """GPT-2's vocabulary (50,257 rows, odd) over tensor=2: the embedding's width takes 'tensor'
    beside 'fsdp' rather than the table staying whole; 'directions' (no rule) takes nothing."""
    from jax.sharding import PartitionSpec as P
    from nety_jax.training import mesh as meshlib
    tcfg = load_config(GPT_TINY, ["train.parallel=mesh", "train.mesh_data=1", "train.mesh_fsdp=2",
                                  "train.mesh_tensor=2"]).train
    mesh, rules = meshlib.make_mesh(tcfg), meshlib.rules_of(tcfg)
    spec = lambda names, shape: meshlib.mesh_spec(P(*names), shape, mesh, rules)
    assert spec(("vocab", "embed"), (50257, 768)) == P(None, ("fsdp", "tensor"))
    assert spec(("embed", "vocab"), (768, 50257)) == P(("fsdp", "tensor"), None)
    assert spec(("vocab", "embed"), (50256, 768)) == P("tensor", "fsdp")  # divisible: as the rules say
    assert spec(("vocab", "embed"), (50257, 6)) == P(None, "fsdp")  # 6 is not a multiple of 4: fsdp alone
    assert spec(("vocab",), (50257,)) == P(None)
    assert spec(("directions", "hidden", "gates"), (2, 32, 7)) == P(None, ("fsdp", "tensor"), None)
