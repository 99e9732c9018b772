"""Phase C's final write, driven: shards packed into tasks by input bytes (one task per CPU, fewer for a small
input), as many tasks in flight as the cluster has CPUs (configurable), each writing its shards' data/ + rejects/
files and done markers (`finalize.py`)."""

from __future__ import annotations

import math
from typing import Any

import ray

from djray.io.errors import task_args
from djray.runtime.cluster import cluster_cpus
from djray.runtime.finalize import FinalizeSpec, PatchSelection, finalize_shards
from djray.runtime.progress import Progress

BYTES_PER_TASK = 256 << 20  # input bytes one final-write task re-reads, at most about this much (unless one shard is)
# A task more only for this much input: a second task often needs a fresh worker process, which takes 1–2 s to start
# on a busy node, about what splitting ~100 MB over two tasks saves (benchmarks/RESULTS.md, Vision).
BYTES_PER_EXTRA_TASK = 128 << 20


def finalize_groups(sizes: list[int], tasks: int) -> list[list[int]]:
    """Consecutive positions packed into about `tasks` groups of similar total size (a large item stays alone)."""
    if not sizes:
        return []
    target = max(1, math.ceil(sum(sizes) / max(1, tasks)))
    groups: list[list[int]] = []
    current: list[int] = []
    n = 0
    for i, size in enumerate(sizes):
        current.append(i)
        n += size
        if n >= target:
            groups.append(current)
            current, n = [], 0
    if current:
        groups.append(current)
    return groups


def write_tasks(sizes: list[int], cpus: int) -> int:
    """How many tasks write shards of these input sizes: one per CPU, fewer for a small input, more for a large one
    (≤ BYTES_PER_TASK each)."""
    total = sum(sizes)
    return max(min(len(sizes), cpus, total // BYTES_PER_EXTRA_TASK or 1), math.ceil(total / BYTES_PER_TASK))


def finalize_spec(plan) -> FinalizeSpec:
    v = plan.cfg.vision
    patches = PatchSelection(v.ratio, v.strategy, v.seed, v.strata, v.mix_alpha) if v else None
    published = tuple(dict.fromkeys(c for step in plan.selection_context().steps for c in step.writes))
    return FinalizeSpec(plan.selection_context(), plan.read_spec(), plan.fps.output, patches, published,
                        plan.cfg.clip is not None, plan.footer(), plan.cfg.output.compression, bool(plan.kept_ops))


def run_final_write(plan, pending: list[str], progress: bool) -> dict[str, dict[str, Any]]:
    """Write every pending shard; returns {shard: counts} for them."""
    cpus = cluster_cpus()
    limit = plan.cfg.ray.max_concurrent_finalize or cpus
    order = {s: i for i, s in enumerate(plan.shards)}
    size = dict(plan.listing)
    sizes = [size[s] for s in pending]
    queue = [[pending[i] for i in g] for g in finalize_groups(sizes, write_tasks(sizes, cpus))]
    task = ray.remote(num_cpus=1, **task_args(plan.cfg.ray.task_retries))(finalize_shards)
    spec = ray.put(finalize_spec(plan))
    bar = Progress("write", len(pending), enabled=progress)
    done: dict[str, dict[str, Any]] = {}
    inflight: dict[Any, list[str]] = {}
    while queue or inflight:
        while queue and len(inflight) < limit:
            group = queue.pop(0)
            inflight[task.remote(spec, [order[s] for s in group])] = group
        ready, _ = ray.wait(list(inflight), num_returns=1)
        group = inflight.pop(ready[0])
        done.update(zip(group, ray.get(ready[0])))
        bar.update(len(done), sum(c["rows_in"] for c in done.values()))
    bar.close()
    return done
