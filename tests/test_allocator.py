"""The sampling commands' malloc setting: freed blocks stay in the process, and a user's own tuning is kept."""

import os
import subprocess
import sys

import pytest

from ddpm_zoo.allocator import user_tuned_malloc

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")

# Resident memory before and after a 64 MiB tensor is written and freed: above glibc's largest mmap threshold
# (32 MiB) the block is unmapped on free unless the thresholds were raised.
PROBE = """
import sys
import torch
from ddpm_zoo.allocator import keep_freed_memory

def resident_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096

applied = keep_freed_memory() if sys.argv[1] == "on" else False
before = resident_bytes()
block = torch.ones(16 * 2**20)
del block
print(applied, (resident_bytes() - before) / 2**20)
"""


def probe(setting: str, **environ: str) -> tuple[str, float]:
    env = {key: value for key, value in os.environ.items() if key != "GLIBC_TUNABLES" and "MALLOC_" not in key}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, setting], env={**env, **environ}, capture_output=True, text=True, check=True
    )
    applied, kept_mib = result.stdout.split()
    return applied, float(kept_mib)


def test_freed_blocks_stay_in_the_process_only_with_the_setting():
    assert probe("on") == ("True", pytest.approx(64, abs=4))
    applied, kept_mib = probe("off")
    assert applied == "False" and kept_mib < 4


def test_a_users_malloc_tuning_is_left_as_it_is():
    applied, kept_mib = probe("on", MALLOC_MMAP_THRESHOLD_="131072")
    assert applied == "False" and kept_mib < 4


@pytest.mark.parametrize(
    "environ, tuned",
    [
        ({}, False),
        ({"MALLOC_TRIM_THRESHOLD_": "0"}, True),
        ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}, True),
        ({"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}, False),
    ],
)
def test_which_environments_count_as_tuned(environ, tuned):
    assert user_tuned_malloc(environ) is tuned
