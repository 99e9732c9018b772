"""Turn readers and ops into a streaming Ray Data plan.

The runtime, not the op, decides how an op runs: a stateless op becomes a Ray task (`map_batches` with a function),
a stateful op (a model loaded in `setup()`) becomes a fixed-size actor pool (`compute=ActorPoolStrategy`) with the
op's CPU/GPU request, resolved against the live cluster (runtime/resources.py). Task stages are fused by Ray Data
into one task chain per block (read → decode → caption check); the model pool is always its own operator.

Task retries, set on purpose (`djray.io.errors.task_args`): every task stage — read, stateless ops, staging
writes — reruns up to `ray.task_retries` times when it raised TransientStorageError (a storage failure that outlasted
the retries of its requests and objects, djray.io.errors) or its worker died. Ray Data's own default is unlimited reruns of dead workers
and none on exceptions; a finite count lets a job whose store stays down fail, resumably, instead of hanging. The same
arguments go on every task stage, as Ray Data fuses only stages with equal remote arguments. A rerun is safe: the
reader is deterministic, and a staged fragment is named by the rows it holds, so a rerun rewrites the same names
(an overlapping copy is dropped when the shard is sealed: djray.runtime.signals). Ray Data's in-task UDF retries
(`DataContext.retried_map_errors` / `max_map_retries`) stay off, and `DataContext.retried_io_errors` applies only to
Ray Data's own file datasources, which djray does not use: djray retries storage where it knows the object and
offset (djray.io.errors).

Task workers run at the lowest CPU priority (`TASK_NICENESS`, set once per worker process), below model actors, which
keep the niceness Ray starts every worker with (its `worker_niceness`, 15): where both want the same cores, the model
(the slowest stage, and while it starts a serial critical path of process start, imports and model build) gets the
larger share (Linux CFS weights 36 against 15), and read/decode use what it leaves. The work done is the same; only
its order changes. Measured on 2 cores at 5,000 images: the model actor's creation took 22-27 s while decode tasks
ran beside it at the same niceness, 11.5 s with them at 19 (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import ray
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from djray import schema as S
from djray.io import fs as iofs
from djray.io.errors import task_args
from djray.io.source import ReadSpec, read_shard
from djray.ops.base import Op, apply_op_output
from djray.runtime import malloc
from djray.runtime.decisions import SelectionContext
from djray.runtime.fuse import FusedOp, fuse_stateful
from djray.runtime.kept import read_kept_rows, stage_patches
from djray.runtime.layout import Layout
from djray.runtime.signals import stage_batch


class ShardDatasource(Datasource):
    """One read task per input shard; each streams its shard as blocks of `rows_per_block` rows."""

    def __init__(self, shards: list[tuple[str, int]], spec: ReadSpec):
        super().__init__()
        self.shards, self.spec = shards, spec

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        return [
            ReadTask(functools.partial(_read_shard_task, src_shard, order, self.spec),
                     BlockMetadata(num_rows=None, size_bytes=None, input_files=[src_shard], exec_stats=None),
                     schema=S.SOURCE_SCHEMA)
            for src_shard, order in self.shards
        ]


TASK_NICENESS = 19  # the lowest priority there is
_lowered = False


def lower_task_priority() -> None:
    """Set this task worker's niceness to TASK_NICENESS, once per process (a no-op where there is no nice)."""
    global _lowered
    if not _lowered and hasattr(os, "nice"):
        _lowered = True
        try:
            os.nice(max(0, TASK_NICENESS - os.nice(0)))
        except OSError:
            pass


def _read_shard_task(src_shard: str, order: int, spec: ReadSpec) -> Iterator[pa.Table]:
    lower_task_priority()
    yield from read_shard(src_shard, order, spec)


def _run_op_task(batch: pa.Table, op: Op) -> pa.Table:
    lower_task_priority()
    if not getattr(op, "_djray_ready", False):
        op.setup()
        op._djray_ready = True  # type: ignore[attr-defined]
    return apply_op_output(batch, op, op(batch))


class _OpActor:
    """Actor wrapper for stateful ops: `setup()` runs once when the actor starts.

    If the op can `describe()` what it loaded (model sources, checksums), the description is written to
    `<output>/_djray/models/<op>.json` for the manifest, with `malloc`: the allocator settings the actor's process
    started with (runtime/malloc.py); every actor writes the same content.
    """

    def __init__(self, op: Op, output_uri: str, storage: iofs.Storage):
        self.op = op
        op.setup()
        describe = getattr(op, "describe", None)
        records = op.records() if isinstance(op, FusedOp) else {op.name: describe()} if describe is not None else {}
        records = {name: {**record, "malloc": malloc.describe()} for name, record in records.items()}
        if records:
            fs, root = iofs.resolve(output_uri, storage)
            for name, record in records.items():
                iofs.write_json(fs, Layout(root).model_record(name), record)

    def __call__(self, batch: pa.Table) -> pa.Table:
        if isinstance(self.op, FusedOp):
            return self.op.run(batch)
        return apply_op_output(batch, self.op, self.op(batch))


def end_model_actors() -> int:
    """End this driver's model actors (djray's `_OpActor` pools) that are still alive; returns how many.

    Called when a plan failed, after its executor was shut down: Ray Data kills the actors it tracks, but an actor
    that became ready while the plan failed is left to garbage collection, and its handle sits in a frame of the
    error's traceback. Whoever keeps the error (a notebook's last error, a log record) keeps the actor and its
    CPU/GPU tokens, and the next run in the process waits for them forever. A driver runs one plan at a time, so
    every model actor of its job still alive here belongs to the failed plan."""
    from ray._private import state

    try:
        job = ray.JobID.from_hex(ray.get_runtime_context().get_job_id())
        alive = state.actors(job_id=job, actor_state_name="ALIVE") or {}
        ids = [a for a, info in alive.items()  # Ray Data names them MapWorker(MapBatches(_OpActor))
               if f"({_OpActor.__name__})" in info.get("ActorClassName", "")]
        for actor_id in ids:  # ray.kill without a handle (what it calls with one)
            ray._private.worker.global_worker.core_worker.kill_actor(ray.ActorID.from_hex(actor_id), True)
    except Exception:  # noqa: BLE001  (best effort, e.g. none of this in Ray Client mode: the plan's error matters)
        return 0
    return len(ids)


def _stage_signals(batch: pa.Table, output_uri: str, storage: iofs.Storage, schema: pa.Schema) -> pa.Table:
    fs, root = iofs.resolve(output_uri, storage)
    return stage_batch(batch, fs, Layout(root), schema)


class KeptRowsDatasource(Datasource):
    """One read task per shard, emitting only the rows still kept after the selection (from the signals store)."""

    def __init__(self, ctx: SelectionContext, orders: list[int], columns: tuple[str, ...], rows_per_block: int):
        super().__init__()
        self.ctx, self.orders, self.columns, self.rows_per_block = ctx, orders, columns, rows_per_block

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        return [
            ReadTask(functools.partial(read_kept_rows, self.ctx, o, self.columns, self.rows_per_block),
                     BlockMetadata(num_rows=None, size_bytes=None, input_files=[self.ctx.shards[o]], exec_stats=None))
            for o in self.orders
        ]


def kept_rows_plan(ctx: SelectionContext, orders: list[int], ops: list[Op], output_sha: str,
                   columns: tuple[str, ...], rows_per_block: int) -> ray.data.Dataset:
    """kept rows → ops → column patches (src_index + the ops' columns); one summary row per (batch, shard)."""
    retry = task_args(ctx.task_retries)
    ds = ray.data.read_datasource(KeptRowsDatasource(ctx, orders, columns, rows_per_block),
                                  override_num_blocks=max(1, len(orders)), ray_remote_args=retry)
    for op in ops:
        ds = add_op(ds, op, ctx.output_uri, ctx.storage, retry, rows_per_block)
    patch_columns = tuple(dict.fromkeys(c for op in ops for c in op.writes))
    return ds.map_batches(functools.partial(stage_patches, ctx=ctx, output_sha=output_sha, columns=patch_columns),
                          batch_size=None, batch_format="pyarrow", zero_copy_batch=True, **retry)


def add_op(ds: ray.data.Dataset, op: Op, output_uri: str, storage: iofs.Storage,
           retry: dict[str, Any] | None = None, block_rows: int | None = None) -> ray.data.Dataset:
    res = op.resources
    kwargs: dict[str, Any] = {"batch_format": "pyarrow", "zero_copy_batch": True}
    if op.stateful:
        # Whole blocks (the op splits each into near-equal forwards: no 64/64/64/9 tails); Ray Data insists on a
        # batch size for GPU actors, so they get one block's worth of rows (`block_rows`). `max_restarts` is Ray
        # Data's own default for actor pools, set here because task stages never carry it: Ray Data fuses a task
        # stage into the next actor stage only when their remote arguments agree, and decode must never run inside
        # the model actor (in series with the model, on the one process that holds the accelerator).
        return ds.map_batches(_OpActor, fn_constructor_args=(op, output_uri, storage), num_cpus=res.num_cpus,
                              num_gpus=res.num_gpus, compute=actor_pool(res),
                              batch_size=(block_rows or res.batch_size) if res.num_gpus else None,
                              max_restarts=-1, **malloc.actor_runtime_env(res), **kwargs)
    # Stateless ops take whole blocks (≤ input.rows_per_block rows): with no batch size, Ray Data fuses them into
    # the read task, so a shard is read, decoded and staged in one process without object-store round trips.
    return ds.map_batches(functools.partial(_run_op_task, op=op), num_cpus=res.num_cpus, batch_size=None, **kwargs,
                          **(retry or {}))


def actor_pool(res) -> ray.data.ActorPoolStrategy:
    """A fixed pool of `pool_size` actors; with `calls` > 1 each runs that many batches at once on its own threads
    (one model per process: runtime/resources.py says when)."""
    calls = res.calls or 1
    if calls == 1:
        return ray.data.ActorPoolStrategy(size=res.pool_size)
    return ray.data.ActorPoolStrategy(size=res.pool_size, max_concurrent_calls_per_actor=calls,
                                      enable_true_multi_threading=True)


def staging_plan(shards: list[tuple[str, int]], spec: ReadSpec, ops: list[Op], output_uri: str,
                 storage: iofs.Storage, schema: pa.Schema) -> ray.data.Dataset:
    """read → ops → staged signal fragments; yields one summary row per (batch, shard) — see `signals.stage_batch`."""
    retry = task_args(spec.task_retries)
    ds = ray.data.read_datasource(ShardDatasource(shards, spec), override_num_blocks=max(1, len(shards)),
                                  ray_remote_args=retry)
    for op in fuse_stateful(ops):  # model ops with equal resources share one actor (fuse.py)
        ds = add_op(ds, op, output_uri, storage, retry, spec.rows_per_block)
    return ds.map_batches(functools.partial(_stage_signals, output_uri=output_uri, storage=storage, schema=schema),
                          batch_size=None, batch_format="pyarrow", zero_copy_batch=True, **retry)
