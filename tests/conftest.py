"""Every test runs with 4 fake CPU devices, so the multi-device paths are always exercised.

Compiled programs go to a persistent cache shared by this session's processes (the CLI
subprocesses inherit it), so a program is compiled once per suite run.

Cost rules (the whole suite has a time budget on CI's 2 cores, see README "Tests"): reuse the
session fixtures below instead of training again; run `nety-jax` through ``run_main`` in this
process unless the process itself is what a test checks (exit on a signal, a lock held by
another process, a fresh interpreter); ``COSTS`` lists the costliest tests and files so xdist
starts them first.
"""
import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# LLVM's optimizations of XLA's CPU code cost more than the tiny models' steps they speed up: at
# -O0 a test compiles in much less CPU time (figures in docs/PERFORMANCE.md, "The test suite"). XLA's
# own (HLO) passes still run; only the CPU machine code is less optimized. CPU runs only, and an
# opt level already in XLA_FLAGS wins (XLA_FLAGS=--xla_backend_optimization_level=2 tests as shipped).
# Subprocesses inherit it; a test that sets XLA_FLAGS for one appends TEST_XLA_FLAGS.
TEST_XLA_FLAGS = "" if os.environ["JAX_PLATFORMS"] != "cpu" or "xla_backend_optimization_level" in \
    os.environ.get("XLA_FLAGS", "") else "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           f" --xla_force_host_platform_device_count=4 {TEST_XLA_FLAGS}").strip()
# The cache this run made (not one the caller named) is removed when the run ends
# (pytest_unconfigure), or every run would leave one in /tmp. xdist's workers inherit the variable,
# so only the controller, which made it, removes it.
_OWN_CACHE = None if "NETY_JAX_COMPILE_CACHE" in os.environ else tempfile.mkdtemp(prefix="nety-jax-test-cache-")
if _OWN_CACHE:
    os.environ["NETY_JAX_COMPILE_CACHE"] = _OWN_CACHE
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.environ["NETY_JAX_COMPILE_CACHE"])
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.05")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# PyTorch (NETY's reference model, HuggingFace's) runs each operation on OpenMP threads that wait
# for each other; with both of CI's cores busy (2 xdist workers) a descheduled thread makes every
# small operation cost milliseconds (docs/PERFORMANCE.md, "The test suite"). One thread: the
# tests' subprocesses inherit it; a benchmark that sets its threads keeps them. XLA ignores it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import io  # noqa: E402
import pathlib  # noqa: E402
import subprocess  # noqa: E402
from contextlib import redirect_stderr, redirect_stdout  # noqa: E402

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
TINY = str(CONFIGS / "tiny.yaml")
PARITY = str(CONFIGS / "nety_parity.yaml")
GPT_TINY = str(CONFIGS / "gpt_tiny.yaml")
RNN_LM = str(CONFIGS / "rnn_lm.yaml")
QUIET = {"progress": False, "log": lambda *_: None}
# The tiny hybrid with one layer of each kind (encoder, decoder, head; the head keeps its 2
# BatchNorms), for tests whose property does not depend on depth (the sums of several devices or
# micro-batches, a resume): a train step traces and compiles in less time with fewer layers
# (docs/PERFORMANCE.md, "The test suite")
ONE_LAYER = ["model.enc_layers=1", "model.dec_layers=1", "model.head_dims=[16]"]


def run_main(*argv) -> subprocess.CompletedProcess:
    """`nety-jax ARGV` in this process (no interpreter start, no JAX import, programs already
    compiled here reused): the exit code and what it printed, as subprocess.run returns them."""
    from nety_jax.cli import main
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:  # argparse's usage errors
            code = e.code
    return subprocess.CompletedProcess(list(argv), code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def tiny_cfg():
    from nety_jax.config import load_config
    return load_config(TINY)


def _trained_once(tmp_path_factory, name: str, path: str, overrides: list) -> tuple:
    """Trains ``path`` with ``overrides`` once per test session: under xdist the first worker to
    ask trains while the others wait on a lock, then all read the same run directory (its tests
    only read it). Returns (workdir, the training's summary)."""
    from nety_jax.config import load_config
    from nety_jax.training.loop import train
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # one process: nothing to share
        workdir = str(tmp_path_factory.mktemp(name))
        return workdir, train(load_config(path, overrides), workdir, **QUIET)
    import fcntl
    import json
    root = tmp_path_factory.getbasetemp().parent  # this session's folder, shared by its workers
    workdir, done = root / f"shared-{name}", root / f"shared-{name}.json"
    with open(root / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            summary = train(load_config(path, overrides), str(workdir), **QUIET)
            done.write_text(json.dumps(summary, default=float))
    return str(workdir), json.loads(done.read_text())


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A tiny hybrid trained briefly on the embedded corpus (shared by the CLI tests)."""
    return _trained_once(tmp_path_factory, "run", TINY, ["train.steps=40", "train.eval_every=40",
                                                         "train.checkpoint_every=40", "data.vocab_size=120"])[0]


@pytest.fixture(scope="session")
def trained_gpt(tmp_path_factory):
    """The tiny GPT trained on the shipped text (shared by the language-model tests)."""
    return _trained_once(tmp_path_factory, "gpt", GPT_TINY, ["train.steps=200"])


@pytest.fixture(scope="session")
def trained_rnn_lm(tmp_path_factory):
    return _trained_once(tmp_path_factory, "rnn_lm", RNN_LM, ["train.steps=200", "model.hidden=128"])


# Scheduling under `make test` (`-n 2 --dist loadscope --no-loadscope-reorder`): xdist's work units are
# whole files (their module fixtures and in-memory compiled programs stay on one worker), except the
# tests in SOLO, which are units of their own (they use no module-scoped fixture: each starts its own
# processes). The units go out costliest first, each worker taking the next when it is about free,
# so no long test starts last and runs alone while the other worker idles. COSTS: seconds a unit
# took in CI (its `--durations`: solo tests as the CI of e138ffd timed them, bench.py --tiny and the
# GPU check as estimated after their two-layer smoke sizes; whole files without their solo tests:
# estimates, from their longest tests in the last CIs: test_speculative.py, unlisted, ran last and one
# worker idled 38-49 s); a unit not listed costs 0 and keeps its place after them
# (docs/PERFORMANCE.md, "The test suite"; `make test` ends with each worker's seconds and tail).
SOLO = {
    "test_multihost.py::test_two_processes_equal_one_process_resume_after_kill_and_across": 129,
    "test_cli.py::test_bench_script_runs_end_to_end_at_tiny_size": 100,
    "test_reliability.py::test_kill_minus_9_at_random_moments_resumes_exactly": 65,
    "test_gpu_check.py::test_the_gpu_check_runs_end_to_end_on_the_cpu": 55,
    "test_training.py::test_sigterm_saves_and_resume_is_exact": 46,
    "test_mesh_restore.py::test_issue_meshes_on_8_devices_train_the_one_device_parameters_in_shards": 46,
    "test_multihost.py::test_two_processes_on_prepared_shards_equal_one_process": 42,
    "test_mesh_restore.py::test_a_2_process_fsdp_job_killed_resumes_exactly_and_generates_in_one_process": 36,
}
COSTS = {**SOLO, "test_reliability.py": 150, "test_hf.py": 120, "test_mesh.py": 90, "test_training.py": 90,
         "test_cli.py": 80, "test_mesh_restore.py": 60, "test_writers.py": 60, "test_readme.py": 50,
         "test_language_models.py": 50, "test_generate.py": 45, "test_speculative.py": 45, "test_learning.py": 30,
         "test_continuous_hybrid.py": 30, "test_torch_io.py": 30, "test_continuous_warmup.py": 25,
         "test_prefix_cache.py": 25, "test_remat.py": 25, "test_accelerator.py": 20, "test_continuous.py": 20}


def _unit(nodeid: str) -> str:
    """The work unit of a test: its ``file::name`` when it is in SOLO, else its file."""
    path, _, name = nodeid.partition("::")
    name = name.split("[")[0]
    short = f"{os.path.basename(path)}::{name}"
    return short if short in SOLO else os.path.basename(path)


def pytest_collection_modifyitems(items):
    for item in items:
        if "::" in _unit(item.nodeid):  # on another worker than its file, a module fixture runs twice
            defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
            shared = [name for name, d in defs.items() if d and d[-1].scope in ("module", "class", "package")
                      and name != "_compiled_programs_bounded"]  # harmless twice
            if shared:
                raise pytest.UsageError(f"conftest.SOLO: {item.nodeid} uses the module fixture(s) {shared}")
    cost = lambda item: COSTS.get(_unit(item.nodeid), 0)
    items.sort(key=lambda item: -cost(item))  # stable: the rest keep their order


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: no error where it is absent
def pytest_xdist_make_scheduler(config, log):
    """loadscope, with the SOLO tests as work units of their own (the order: the items' order)."""
    if config.getoption("dist") != "loadscope":
        return None  # xdist's own scheduler
    from xdist.scheduler import LoadScopeScheduling

    class Scheduler(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            unit = _unit(nodeid)
            return nodeid.split("::")[0] if "::" not in unit else nodeid

    return Scheduler(config, log)


def pytest_addoption(parser):
    parser.addoption("--cpu-durations", type=int, default=None, metavar="N",
                     help="list the N tests that used the most CPU seconds (0: all): user + sys of the test's "
                          "process and of the subprocesses it waited for, setup, call and teardown together; "
                          "unlike --durations' wall seconds, comparable between runs on a loaded machine")


def _cpu_seconds() -> float:
    import resource
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Each phase's report carries its CPU seconds (``user_properties``: xdist sends them to the
    controller), measured from the phase's start, which pytest_runtest_{setup,call,teardown} note."""
    outcome = yield
    started = item.stash.get(_CPU_START, None)
    if started is not None and started[0] == call.when:
        outcome.get_result().user_properties.append(("cpu_s", _cpu_seconds() - started[1]))
    if call.when == "teardown":
        outcome.get_result().user_properties.append(("maps", _memory_maps()))


_CPU_START = pytest.StashKey[tuple]()


def _memory_maps() -> int:
    """This process's memory mappings (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/maps", "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def _max_maps() -> int:
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


@pytest.fixture(autouse=True, scope="module")
def _compiled_programs_bounded():
    """After each file, past half the kernel's limit on memory mappings, drops the compiled programs
    JAX's caches keep. Every program XLA compiles for the CPU lives in mappings of its own for as
    long as a cache holds it, and a worker keeps every program of every file it ran: at
    ``vm.max_map_count`` the next compile fails ("Failed to materialize symbols") and the worker
    dies with a segmentation fault while the error unwinds (docs/PERFORMANCE.md, "A worker's
    compiled programs and the kernel's limit on memory mappings"). The programs a later file needs
    again come back from the persistent cache. The per-worker peak is in the summary."""
    yield
    limit = _max_maps()
    if limit and _memory_maps() > limit // 2:
        import gc
        import jax
        jax.clear_caches()
        gc.collect()


def _note_cpu_start(item, when: str) -> None:
    item.stash[_CPU_START] = (when, _cpu_seconds())


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _note_cpu_start(item, "setup")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    _note_cpu_start(item, "call")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item):
    _note_cpu_start(item, "teardown")


# What CI's log needs to see whether the schedule works: per xdist worker, the seconds its tests
# took and when its last one finished; the gap between the workers' finishes is the tail in
# which one core idled (printed by the controller, after --durations)
_WORKERS: dict = {}
_PEAK_MAPS: dict = {}  # per worker, the most memory mappings after a test (see _compiled_programs_bounded)
_STARTED = [None]


def pytest_sessionstart(session):
    import time
    _STARTED[0] = time.monotonic()


_CPU_BY_TEST: dict = {}


def pytest_runtest_logreport(report):
    for name, value in report.user_properties:
        if name == "cpu_s":
            _CPU_BY_TEST[report.nodeid] = _CPU_BY_TEST.get(report.nodeid, 0.0) + value
    node = getattr(report, "node", None)  # set by pytest-xdist on the controller only
    if node is None or _STARTED[0] is None:
        return
    import time
    worker = node.gateway.id
    for name, value in report.user_properties:
        if name == "maps":
            _PEAK_MAPS[worker] = max(_PEAK_MAPS.get(worker, 0), value)
    busy, _, units = _WORKERS.get(worker, (0.0, 0.0, []))
    unit = _unit(report.nodeid)
    if report.when == "setup" and (not units or units[-1] != unit):
        units.append(unit)
    _WORKERS[worker] = (busy + report.duration, time.monotonic() - _STARTED[0], units)


@pytest.hookimpl(trylast=True)  # after --durations
def pytest_terminal_summary(terminalreporter, config):
    count = config.getoption("cpu_durations")
    if count is not None and _CPU_BY_TEST:
        ranked = sorted(_CPU_BY_TEST.items(), key=lambda kv: -kv[1])
        terminalreporter.write_sep("=", f"CPU seconds per test (all {len(ranked)}: {sum(_CPU_BY_TEST.values()):.1f})")
        for nodeid, seconds in ranked[:count or None]:
            terminalreporter.write_line(f"{seconds:8.2f} CPU-s  {nodeid}")
    if len(_WORKERS) < 2:
        return
    finishes = [done for _, done, _ in _WORKERS.values()]
    terminalreporter.write_sep("=", "xdist workers (conftest.COSTS orders the units)")
    for worker, (busy, done, units) in sorted(_WORKERS.items()):
        terminalreporter.write_line(f"{worker}: tests {busy:.1f} s, last done at {done:.1f} s, {len(units)} units, "
                                    f"the last: {', '.join(units[-3:])}; at most {_PEAK_MAPS.get(worker, 0):,} "
                                    f"memory mappings (the limit: {_max_maps():,})")
    terminalreporter.write_line(f"tail (one worker idle): {max(finishes) - min(finishes):.1f} s")


def pytest_unconfigure(config):
    if _OWN_CACHE:
        import shutil
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)
