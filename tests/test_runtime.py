"""Process-wide settings: glibc's malloc keeping freed memory (runtime.keep_host_memory)."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT, TINY, run_main

# a jitted function with four 64 MB temporaries (each product's sin operand): on jax 0.11+ XLA
# fuses the sin into YNNPACK's dot, which allocates that 64 MB at every call, often on an XLA
# worker thread; the page faults of each call
FAULTS = """
import json, resource, sys
from nety_jax.runtime import keep_host_memory
applied = keep_host_memory(sys.argv[1])
import jax, jax.numpy as jnp
f = jax.jit(lambda x: sum((jnp.sin(x * (i + 1)) @ jnp.cos(x)[:, i:i + 64]).sum() for i in range(4)))
x = jnp.ones((4096, 4096))
rounds = []
for _ in range(int(sys.argv[2])):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    rounds.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps([applied, rounds]))
"""


def faults(mode, calls):
    done = subprocess.run([sys.executable, "-c", FAULTS, mode, str(calls)], cwd=ROOT, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_xla_temporaries_are_reused_without_page_faults():
    import importlib.metadata
    applied, plain = faults("default", 4)
    assert applied is False
    jaxlib = tuple(int(p) for p in importlib.metadata.version("jaxlib").split(".")[:3] if p.isdigit())
    if jaxlib < (0, 12, 1):
        # glibc's default hands XLA's freed temporaries back to the kernel: every call faults them
        # in again (from jaxlib 0.12.1 XLA keeps them itself: docs/PERFORMANCE.md, "jax 0.12.1")
        assert min(plain[1:]) > 40_000, plain
    applied, kept = faults("keep", 12)
    assert applied is True
    # the heap grows while it settles (to hold as many blocks as are ever live at once); after
    # that most calls fault (almost) nothing: one 64 MB temporary faulted in again is 16,384
    late = sorted(kept[4:])
    assert late[len(late) // 2] < 2_000, (plain, kept)


# a heap whose top holds more than 2 GB freed (a large train step's temporaries): glibc trims
# it after every step unless the trim threshold is past any size (faults counted per round)
TRIM = """
import json, resource, sys
import numpy as np
from nety_jax.runtime import keep_host_memory
keep_host_memory("keep")
rounds = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a, b = np.ones(2_600_000_000 // 8), np.ones(600_000_000 // 8)
    del a, b
    rounds.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(rounds))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_heap_of_more_than_2_gb_is_not_trimmed_between_steps():
    done = subprocess.run([sys.executable, "-c", TRIM], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    rounds = json.loads(done.stdout)
    assert rounds[0] > 500 and max(rounds[1:]) < rounds[0] // 20, rounds


@pytest.mark.parametrize("jaxlib,workers", [("0.10.2", False), ("0.11.2", True), ("0.12.0.1", True),
                                            ("0.11.0.dev20260716", True)])
def test_one_malloc_arena_only_where_xla_workers_allocate_temporaries(monkeypatch, jaxlib, workers):
    import importlib.metadata

    from nety_jax import runtime
    monkeypatch.setattr(importlib.metadata, "version", lambda name: jaxlib)
    assert runtime.workers_allocate_temporaries() is workers


@pytest.mark.parametrize("mode,workers,arena", [("keep", True, True), ("keep", False, False),
                                                ("keep-arenas", True, False)])
def test_what_each_mode_asks_of_malloc(monkeypatch, mode, workers, arena):
    import ctypes

    import jax

    from nety_jax import runtime
    calls = []

    class Libc:
        gnu_get_libc_version = None

        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(runtime, "cpu_settings_apply", lambda: True)
    monkeypatch.setattr(runtime, "workers_allocate_temporaries", lambda: workers)
    monkeypatch.setattr(ctypes, "CDLL", lambda name: Libc())
    monkeypatch.setattr(jax.config, "update", lambda name, value: calls.append((name, value)))
    assert runtime.keep_host_memory(mode) is True
    assert calls[:2] == [(-4, 0), (-1, -1)]  # M_MMAP_MAX, M_TRIM_THRESHOLD (never)
    assert ((-8, 1) in calls) is arena  # M_ARENA_MAX
    assert calls[-1] == ("jax_cpu_enable_async_dispatch", False)


def test_a_bad_setting_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("NETY_JAX_HOST_MALLOC", "sometimes")
    done = run_main("train", "--config", TINY, "--workdir", str(tmp_path / "w"))
    assert done.returncode == 2, done.stderr
    assert ("NETY_JAX_HOST_MALLOC must be one of 'keep', 'keep-arenas', 'default', got 'sometimes'"
            in done.stderr)
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "w").exists()
