"""Process-wide settings: glibc's malloc keeping freed memory (runtime.keep_host_memory)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, TINY

# allocates, writes and frees a 64 MB block four times; prints the page faults of each round
FAULTS = """
import json, resource, sys
import numpy as np
from nety_jax.runtime import keep_host_memory
applied = keep_host_memory(sys.argv[1])
rounds = []
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = np.ones(64 * 2**20 // 8)
    del block
    rounds.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps([applied, rounds]))
"""


def faults(mode):
    done = subprocess.run([sys.executable, "-c", FAULTS, mode], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_kept_memory_is_reused_without_page_faults():
    applied, rounds = faults("default")
    assert applied is False
    # glibc's default unmaps a block this large on free: every round faults its pages in again
    assert min(rounds[1:]) > rounds[0] // 2 > 0, rounds
    applied, rounds = faults("keep")
    assert applied is True
    assert max(rounds[1:]) < rounds[0] // 10, rounds


def test_a_bad_setting_is_a_one_line_error(tmp_path):
    env = {**os.environ, "NETY_JAX_HOST_MALLOC": "sometimes"}
    done = subprocess.run([sys.executable, "-m", "nety_jax.cli", "train", "--config", TINY, "--workdir",
                           str(tmp_path / "w")], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "NETY_JAX_HOST_MALLOC must be 'keep' or 'default', got 'sometimes'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "w").exists()
