"""Process-wide settings: glibc's malloc tunable for XLA's temporaries (runtime.host_malloc_env)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, TINY
from nety_jax.errors import ConfigError
from nety_jax.runtime import HUGEPAGES, host_malloc_env

# a jitted function with ~130 MB of temporaries, called 3 times: the page faults of each call
FAULTS = """
import json, resource, jax, jax.numpy as jnp
f = jax.jit(lambda x: (jnp.sin(x) @ jnp.cos(x)[:, :64]).sum())
x = jnp.ones((4096, 4096))
rounds = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    rounds.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(rounds))
"""


def huge_pages_available() -> bool:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            thp = f.read()
        major, minor = os.confstr("CS_GNU_LIBC_VERSION").split()[1].split(".")[:2]
    except (OSError, ValueError, AttributeError, IndexError):
        return False
    return "[never]" not in thp and (int(major), int(minor)) >= (2, 35)


def test_the_tunable_is_added_once_and_can_be_turned_off():
    if not sys.platform.startswith("linux"):
        assert host_malloc_env({}) is None
        return
    assert host_malloc_env({})["GLIBC_TUNABLES"] == HUGEPAGES
    other = "glibc.malloc.arena_max=2"
    assert host_malloc_env({"GLIBC_TUNABLES": other})["GLIBC_TUNABLES"] == f"{other}:{HUGEPAGES}"
    assert host_malloc_env({"GLIBC_TUNABLES": HUGEPAGES}) is None  # already set: no second restart
    assert host_malloc_env({"NETY_JAX_HOST_MALLOC": "default"}) is None
    with pytest.raises(ConfigError, match="NETY_JAX_HOST_MALLOC must be 'hugepages' or 'default', got 'maybe'"):
        host_malloc_env({"NETY_JAX_HOST_MALLOC": "maybe"})


@pytest.mark.skipif(not huge_pages_available(), reason="needs glibc >= 2.35 and transparent huge pages")
def test_huge_pages_remove_most_page_faults_of_xla_temporaries():
    def faults(env):
        done = subprocess.run([sys.executable, "-c", FAULTS], cwd=ROOT, capture_output=True, text=True,
                              env=env, timeout=300)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)[-1]
    plain = faults({**os.environ, "GLIBC_TUNABLES": ""})
    tuned = faults(host_malloc_env({**os.environ, "GLIBC_TUNABLES": ""}))
    # glibc's default hands the freed blocks back to the kernel: every call faults ~130 MB in again
    assert plain > 10_000 and tuned < plain // 4, (plain, tuned)


def test_the_command_restarts_with_the_tunable_and_reports_a_bad_setting_in_one_line(tmp_path):
    script = "import os; print(os.environ.get('GLIBC_TUNABLES'))"
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "NETY_JAX_HOST_MALLOC")}
    probe = subprocess.run([sys.executable, "-c", "import sys; from nety_jax.runtime import "
                            "restart_with_host_malloc as r; r(['-c', sys.argv[1]]); print('not restarted')",
                            script], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    expected = HUGEPAGES if sys.platform.startswith("linux") else "not restarted"
    assert probe.returncode == 0 and probe.stdout.strip() == expected, probe.stdout + probe.stderr
    done = subprocess.run([sys.executable, "-m", "nety_jax.cli", "train", "--config", TINY, "--workdir",
                           str(tmp_path / "w")], cwd=ROOT, capture_output=True, text=True,
                          env={**env, "NETY_JAX_HOST_MALLOC": "sometimes"}, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "NETY_JAX_HOST_MALLOC must be 'hugepages' or 'default', got 'sometimes'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "w").exists()
