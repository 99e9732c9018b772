"""Model actors sized to the live cluster: an op declares what it needs, None where the runtime should decide.

Resolved once Ray is up, before any plan is built (`resolve_phases`), for every stateful op (a model actor pool):

* GPUs in the cluster, `num_gpus` unset: one actor per GPU (`num_gpus: 1`), 1 CPU token each; the read tasks decode
  ahead of them on the other cores (docs/cluster.md sizes that).
* no GPU, a local instance, every model op of the phase `thread_safe`: ONE actor per `MAX_CALLS` cores (rounded
  up), each running an equal share of the cores' batches at once (`calls`), each on its own Python thread with ONE torch thread (set explicitly in the op's
  `setup()`: Ray's OMP_NUM_THREADS is not the op's business), holding the CPU tokens that leave `TASK_CPUS` for the
  read / decode / staging tasks. On 2 cores: 1 actor x 1 CPU x 2 calls. Measured on 2 cores: as fast as one
  1-thread actor per core (28 vs 27 img/s, ViT-S/16 bf16), with one process to start and one model in memory
  instead of two; one actor with 2 torch threads per batch was slower (its threads wait on each other whenever
  Ray's own processes interrupt one: docs/vision.md).
* no GPU otherwise (an attached cluster, whose nodes' sizes are not known here, or an op that is not thread-safe):
  one actor per core, each with an equal share of those tokens and one torch thread.
* keys the config sets are kept, except on a fixed-size local instance where the pools would hold every CPU token
  and starve the read tasks: their tokens (a scheduling count, not cores) are scaled down to leave `TASK_CPUS`, the
  torch threads stay as asked (`num_cpus: 2` still means 2 threads). Only a one-CPU instance is refused.

Ops with equal resolved resources in one phase are then fused into one pool (runtime/fuse.py). The resolved values
and the thread count are recorded in the manifest's model record (`resources`, `threads`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

from djray.config import ConfigError
from djray.ops.base import Op, Resources

TASK_CPUS = 1.0  # a read / decode / staging task's CPU request: kept free on a fixed-size instance
MAX_CALLS = 8  # batches one CPU actor runs at once by default (each holds the GIL between its torch calls)


@dataclass(frozen=True)
class Cluster:
    cpus: float  # Ray's CPU tokens
    gpus: float
    cores: int  # cores the model actors can use: this machine's for a local instance, else the tokens
    fixed: bool  # a local instance: no node joins later, so the tokens are all there will be


def live_cluster(attached: bool) -> Cluster:
    import ray

    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 1)), float(res.get("GPU", 0))
    cores = int(cpus) if attached else min(int(cpus), os.cpu_count() or 1)
    return Cluster(cpus=cpus, gpus=gpus, cores=max(1, cores), fixed=not attached)


def resolve(op: Op, cluster: Cluster, cpu_budget: float, threaded: bool = False) -> Resources:
    """`op.resources` with every None filled; `cpu_budget` = tokens the model pools of this phase may hold;
    `threaded`: a CPU pool left to the runtime runs several calls per actor (module docstring)."""
    r = op.resources
    if r.num_gpus is None and cluster.gpus >= 1:
        pool = r.pool_size or max(1, int(cluster.gpus))
        cpus = r.num_cpus or 1.0
        return dataclasses.replace(r, num_gpus=1.0, pool_size=pool, num_cpus=cpus,
                                   threads=r.threads or max(1, int(cpus)), calls=r.calls or 1)
    calls = r.calls or 1
    if r.calls is None and r.pool_size is None and r.num_cpus is None and threaded:
        actors = math.ceil(cluster.cores / MAX_CALLS)  # 12 cores: 2 actors x 6 calls, not 1 x 8 and 4 idle cores
        calls = max(1, cluster.cores // actors)
    pool = r.pool_size or max(1, cluster.cores // calls)
    if r.num_cpus is not None:
        cpus, threads = r.num_cpus, r.threads or max(1, round(r.num_cpus / calls))
    else:
        cpus = cpu_budget / pool if cpu_budget >= 0.01 * pool else 1.0  # (an empty autoscaling cluster: 1)
        threads = r.threads or max(1, cluster.cores // (pool * calls))
    return dataclasses.replace(r, num_gpus=r.num_gpus or 0.0, pool_size=pool, num_cpus=round(cpus, 4),
                               threads=threads, calls=calls)


def resolve_phase(ops: list[Op], cluster: Cluster) -> list[str]:
    """Resolve the stateful ops of one phase in place; returns one line per op saying what it got and why."""
    models = [op for op in ops if op.stateful]
    if not models:
        return []
    budget = cluster.cpus - TASK_CPUS
    explicit = [op for op in models if op.resources.num_cpus is not None and op.resources.pool_size is not None]
    auto_budget = budget - sum(op.resources.num_cpus * op.resources.pool_size for op in explicit)
    threaded = cluster.fixed and cluster.gpus < 1 and all(op.thread_safe for op in models)
    for op in models:
        op.resources = resolve(op, cluster, auto_budget, threaded)
    held = _held(ops)
    if cluster.fixed and held > budget + 1e-9:
        if budget <= 0:
            raise ConfigError(f"{models[0].stage}.resources: the local Ray instance has {cluster.cpus:g} CPU, none "
                              "left for the read tasks next to a model actor; give it 2 or more (ray.num_cpus)")
        scale = budget / held
        for op in models:
            r = op.resources
            op.resources = dataclasses.replace(r, num_cpus=math.floor(r.num_cpus * scale * 1e4) / 1e4)
    return [_note(op, cluster) for op in models]


def _held(ops: list[Op]) -> float:
    """CPU tokens the phase's actor pools hold (ops that runtime/fuse.py merges share one pool)."""
    from djray.runtime.fuse import fuse_stateful

    return sum(op.resources.num_cpus * op.resources.pool_size for op in fuse_stateful(ops) if op.stateful)


def _note(op: Op, cluster: Cluster) -> str:
    r = op.resources
    where = f"{cluster.gpus:g} GPU" if r.num_gpus else f"no GPU, {cluster.cores} cores"
    calls = f", {r.calls} batches at once of {r.threads} torch thread(s) each" if (r.calls or 1) > 1 else \
        f", {r.threads} torch thread(s) each"
    return (f"{op.stage}: {r.pool_size} actor(s) x {r.num_cpus:g} CPU"
            + (f" x {r.num_gpus:g} GPU" if r.num_gpus else "") + f"{calls} "
            f"({where}, {cluster.cpus:g} CPU tokens, {TASK_CPUS:g} kept for read/decode tasks)")


def resolve_phases(phases: list[list[Op]], cluster: Cluster) -> list[str]:
    return [line for ops in phases for line in resolve_phase(ops, cluster)]
