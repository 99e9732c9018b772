"""The C allocator of CPU model actors: freed memory is kept for the next batch instead of given back to the kernel.

A CPU forward allocates and frees the same large buffers on every batch (ViT-S/16 at batch 64: about 60 MB of
attention per block, 3.6 GB over 12 blocks). glibc serves blocks above its mmap threshold (at most 32 MB) with a
fresh `mmap` and returns them with `munmap`, and gives the top of its heaps back above its trim threshold, so every
batch faults its working set in again, page by page, zeroed by the kernel. Measured on 2 cores (ViT-S/16 fp32,
batch 64, the actor's shape: 2 batches at once of 1 torch thread): 10,000 page faults per image and 17 % of the
actor's CPU time in the kernel; with the settings below 14.3 → 17.4 img/s, kernel time 9 s → 0.2 s per 384 images
(benchmarks/RESULTS.md, Vision).

`CPU_ACTOR_TUNABLES`: one arena (threads of a multi-call actor share the heap, so a buffer freed by one is reused
by the other), no mmap for large blocks, no trimming. glibc reads `GLIBC_TUNABLES` once, when the process starts,
so the runtime sets it in the actor's `runtime_env` (Ray merges it with the job's own runtime environment) and the
actor process starts with it; `mallopt` after start-up cannot move the arenas threads already hold. The cost: the
actor keeps its peak working set (one forward per call) for its lifetime; it would fault it in again on every batch
otherwise. GPU actors allocate their tensors on the device and are left alone. A `GLIBC_TUNABLES` already set in
the driver's environment wins (set it, even to `glibc.malloc.check=0`, to keep glibc's defaults); other C
libraries (musl, macOS) ignore the variable.
"""

from __future__ import annotations

import os
from typing import Any

from djray.ops.base import Resources

CPU_ACTOR_TUNABLES = ":".join((
    "glibc.malloc.arena_max=1",  # every thread allocates from the main heap (a buffer freed by one call is reused)
    "glibc.malloc.mmap_max=0",  # large blocks come from the heap too, not from a fresh mmap each time
    f"glibc.malloc.trim_threshold={1 << 40}",  # freed memory at the heap's top is kept, never trimmed
))
ENV = "GLIBC_TUNABLES"


def actor_runtime_env(res: Resources) -> dict[str, Any]:
    """Remote arguments for a model actor pool: the tunables for a CPU actor, nothing for a GPU actor or when the
    driver's environment sets its own."""
    if res.num_gpus or ENV in os.environ:
        return {}
    return {"runtime_env": {"env_vars": {ENV: CPU_ACTOR_TUNABLES}}}


def describe() -> str:
    """What this process's allocator runs with, for the model record: the tunables it started with, or `default`."""
    return os.environ.get(ENV) or "default"
