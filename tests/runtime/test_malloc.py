"""CPU model actors start with glibc tunables that keep freed memory (djray/runtime/malloc.py): the remote arguments
the runtime gives a pool, and the tunables' effect on a real process (page faults of a repeated large allocation)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from djray.ops.base import Resources
from djray.runtime import malloc

# Two threads allocate, touch and free a 48 MB buffer (above glibc's largest mmap threshold) again and again, like
# the batches of a two-call actor; prints the page faults of the rounds after the first. Transparent huge pages are
# turned off for the child (prctl PR_SET_THP_DISABLE) so that a page is 4 KiB on any kernel setting.
_CHILD = """
import ctypes, json, resource, threading
ctypes.CDLL(None, use_errno=True).prctl(41, 1, 0, 0, 0)
def rounds(n):
    for _ in range(n):
        b = bytearray(48 << 20)
        b[::4096] = b"\\1" * len(b[::4096])
        del b
def both(n):
    ts = [threading.Thread(target=rounds, args=(n,)) for _ in range(2)]
    [t.start() for t in ts]; [t.join() for t in ts]
both(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
both(5)
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))
"""


def test_cpu_actors_get_the_tunables_gpu_actors_and_a_driver_setting_are_left_alone(monkeypatch):
    monkeypatch.delenv(malloc.ENV, raising=False)
    cpu = malloc.actor_runtime_env(Resources(num_cpus=1, num_gpus=0, pool_size=1))
    assert cpu == {"runtime_env": {"env_vars": {malloc.ENV: malloc.CPU_ACTOR_TUNABLES}}}
    assert malloc.actor_runtime_env(Resources(num_cpus=1, num_gpus=1, pool_size=1)) == {}
    assert malloc.describe() == "default"
    monkeypatch.setenv(malloc.ENV, "glibc.malloc.check=0")
    assert malloc.actor_runtime_env(Resources(num_cpus=1, num_gpus=0, pool_size=1)) == {}
    assert malloc.describe() == "glibc.malloc.check=0"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="GLIBC_TUNABLES is read by glibc only")
def test_the_tunables_stop_the_refaulting_of_freed_buffers():
    def faults(tunables: str | None) -> int:
        env = {k: v for k, v in os.environ.items() if k != malloc.ENV}
        if tunables is not None:
            env[malloc.ENV] = tunables
        out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True)
        return json.loads(out.stdout)

    buffer = (48 << 20) // 4096  # pages of one buffer
    default, tuned = faults(None), faults(malloc.CPU_ACTOR_TUNABLES)
    assert default >= 5 * buffer, default  # glibc's default: each of the ten buffers is a fresh mmap, faulted in
    # the tunables took: the heap keeps freed buffers; it may grow once more, when both threads' buffers first
    # live at the same time
    assert tuned <= 2 * buffer + 100, (tuned, default)
