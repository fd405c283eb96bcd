"""Process-wide settings: glibc's malloc keeping freed memory (runtime.keep_host_memory)."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT, TINY, run_main

# a jitted function with ~130 MB of temporaries, called 8 times: the page faults of each call
FAULTS = """
import json, resource, sys
from nety_jax.runtime import keep_host_memory
applied = keep_host_memory(sys.argv[1])
import jax, jax.numpy as jnp
f = jax.jit(lambda x: (jnp.sin(x) @ jnp.cos(x)[:, :64]).sum())
x = jnp.ones((4096, 4096))
rounds = []
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    rounds.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps([applied, rounds]))
"""


def faults(mode):
    done = subprocess.run([sys.executable, "-c", FAULTS, mode], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _jax_version():
    from importlib.metadata import version
    return tuple(int(p) for p in version("jax").split(".")[:2])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.skipif(_jax_version() >= (0, 11), reason="on jax 0.11.2 and 0.12 these settings no longer "
                    "keep XLA's temporaries (about 16,400 faults a call either way): an open item in "
                    "docs/PERFORMANCE.md; `make test-smoke` checks it on jax 0.10.2")
def test_xla_temporaries_are_reused_without_page_faults():
    applied, plain = faults("default")
    assert applied is False
    # glibc's default hands XLA's freed temporaries back to the kernel: every call faults them in again
    assert min(plain[1:]) > 10_000, plain
    applied, kept = faults("keep")
    assert applied is True
    # the heap may still grow once or twice while it settles; most calls fault (almost) nothing
    assert sorted(kept[1:])[len(kept[1:]) // 2] < min(plain[1:]) // 20, (plain, kept)


def test_a_bad_setting_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("NETY_JAX_HOST_MALLOC", "sometimes")
    done = run_main("train", "--config", TINY, "--workdir", str(tmp_path / "w"))
    assert done.returncode == 2, done.stderr
    assert "NETY_JAX_HOST_MALLOC must be 'keep' or 'default', got 'sometimes'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "w").exists()
