"""Phase B: the steps of the selection (key_dedup, then the configured sieves), each over the rows still alive.

Decisions stay distributed: tasks read the signals store, decide, and write per-shard decision files; the driver
gets counts, never rows. Per step:

* fit (optional) — a seeded sample gathered by map tasks, or a streamed scan in one task, feeds `sieve.fit`;
* grouped sieve  — map tasks (a few shards each) compute `group` and split rows by group hash into P partitions;
  reduce task p calls `select` on each of its groups (rows sorted by row id) and splits its decisions by shard into
  Q parts; writer task q writes them as per-shard decision files. No task holds more than whole groups. A small
  pool (P = 1, at most ONE_TASK_MAX_SHARDS shards) runs the same map, reduce and write in one task;
* ranked sieve   — map tasks return (row id, score): 12 bytes per row reach one task, which finds the exact cut-off
  of the top n; rows tied at the cut-off are ordered by the sieve's tie-break in a second small pass; map tasks then
  write the per-shard decisions. A threshold needs no gather at all (runtime/select_ranked.py).

A step's completion marker (`_djray/select/<selection sha>/<i>-<op>.json`, its counts) is written after all its
files: a resume never recomputes a finished step, so a sampled k-means or a greedy pass cannot give another keep set
for shards written after a crash. An unfinished step's files are deleted and the step is redone.
"""

from __future__ import annotations

import functools
import math
import pickle
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from djray import schema as S
from djray.io import fs as iofs
from djray.io.errors import task_args
from djray.ops.sieve import build_sieve
from djray.ops.sieve.base import GROUP, ROW_ID, GroupSieve, RankSieve, Sieve, SieveParams, sample_filter, \
    sample_order, sample_seed
from djray.runtime.decisions import SelectionContext, Step, alive_rows, decision_rows, write_decisions
from djray.runtime.recaption import run_recaption
from djray.runtime.select_ranked import ranked

TARGET_PARTITION_BYTES = 256 << 20  # rows one reduce task holds, in bytes of the columns its sieve reads
TARGET_MAP_BYTES = 128 << 20
MAX_PARTITIONS = 512
# A grouped step this small runs as one task (map, plan, reduce and write in a row): three rounds of scheduling cost
# more than reading a few small signals files in series (benchmarks/vision_throughput.py, select_s).
ONE_TASK_MAX_SHARDS = 16
ONE_TASK_MAX_BYTES = 16 << 20
MAX_FITTED_BYTES = 512 << 20
FIT_WAIT_S = 10.0  # how long a fit waits for the CPUs it wants before it takes the free ones


def steps_of(params: list[SieveParams], shas: list[str]) -> tuple[Step, ...]:
    sieves = [build_sieve(p) for p in params]
    return tuple(Step(i, p.op, s.reason, tuple(s.writes), sha, bool(getattr(s, "recaption", False)))
                 for i, (p, s, sha) in enumerate(zip(params, sieves, shas)))


def run_selection(ctx: SelectionContext, params: list[SieveParams], pool_rows: Callable[[], int],
                  column_bytes: Callable[[], dict[str, float]], cpus: int,
                  log: Callable[[str], None] = lambda m: None, attached: bool = False,
                  rows_per_block: int = 256) -> list[dict[str, Any]]:
    """Run every step not yet marked done; return one record per step (rows_in, dropped, kept, describe).

    `pool_rows` (rows alive before the first step, an estimate is fine) and `column_bytes` (bytes per row of each
    signal column) are asked for only when a step has to run: they size the tasks. `attached` (a cluster, not a
    local instance) and `rows_per_block` size a recaption pass's actor pools and blocks."""
    fs, layout = ctx.out()
    records: list[dict[str, Any]] = []
    pool: int | None = None
    widths: dict[str, float] | None = None
    for step, p in zip(ctx.steps, params):
        marker_path = layout.step_marker(step.name)
        record = iofs.read_json(fs, marker_path)
        if record is None:
            _delete_decisions(fs, layout.step_dir(step.name))
            sieve = build_sieve(p)
            pool = pool_rows() if pool is None else pool
            widths = column_bytes() if widths is None else widths
            width = 64 + sum(widths.get(c, 16) for c in sieve.reads)
            recaption = dict(attached=attached, rows_per_block=rows_per_block, log=log,
                             evidence=S.VIS_EVIDENCE in widths) if step.recaption else None
            record = _run_step(ctx, step, sieve, pool, width, cpus, recaption)
            record.update(op=step.op, step=step.name, params=p.model_dump(mode="json"))
            iofs.write_json(fs, marker_path, record)
            log(f"[select] {step.name}: {record['dropped']:,} of {record['rows_in']:,} rows dropped")
        records.append(record)
        pool = record["kept"]
    return records


def _delete_decisions(fs, step_dir: str) -> None:
    """An unfinished step's decision files; its recaptions (a subdirectory, per shard complete or not) are kept."""
    from pyarrow.fs import FileSelector, FileType

    for info in iofs.file_info(fs, FileSelector(step_dir, recursive=False, allow_not_found=True)):
        if info.type == FileType.File:
            iofs.delete_file(fs, info.path)


def _chunks(n_shards: int, rows: int, width: float, cpus: int) -> list[list[int]]:
    n = max(1, min(n_shards, max(2 * cpus, math.ceil(rows * width / TARGET_MAP_BYTES))))
    return [list(range(i, n_shards, n)) for i in range(n)]


def _run_step(ctx: SelectionContext, step: Step, sieve: Sieve, pool: int, width: float, cpus: int,
              recaption: dict[str, Any] | None = None) -> dict[str, Any]:
    chunks = _chunks(len(ctx.shards), pool, width, cpus)
    ctx_ref = ray.put(ctx)
    retry = task_args(ctx.task_retries)
    if sieve.fit_rows != "none":
        sieve = _fit(ctx_ref, chunks, step, sieve, pool, cpus, retry)
    sieve_ref = ray.put(sieve)
    if isinstance(sieve, RankSieve):
        again = None
        if recaption is not None:  # between δ and the decisions: re-caption and re-score the rows below δ
            again = functools.partial(run_recaption, ctx, step, sieve.params, chunks=chunks, **recaption)
        return {**ranked(ctx_ref, chunks, step, sieve, sieve_ref, retry, again), "describe": sieve.describe()}
    assert isinstance(sieve, GroupSieve), f"{type(sieve).__name__} is neither a GroupSieve nor a RankSieve"
    parts = max(1, min(MAX_PARTITIONS, math.ceil(pool * width / TARGET_PARTITION_BYTES)))
    if parts == 1 and len(ctx.shards) <= ONE_TASK_MAX_SHARDS and pool * width <= ONE_TASK_MAX_BYTES:
        return ray.get(_grouped_in_one_task.options(**retry).remote(ctx_ref, step, sieve_ref))
    return _grouped(ctx_ref, chunks, step, sieve_ref, parts, min(len(ctx.shards), max(parts, cpus)),
                    sieve.needs_group_sizes, retry)


# ---- fit -----------------------------------------------------------------------------------------------------------

def _fit(ctx_ref, chunks: list[list[int]], step: Step, sieve: Sieve, pool: int, cpus: int, retry: dict) -> Sieve:
    # The fit runs alone (its inputs are complete before it starts): it gets every CPU of one node, so a k-means
    # uses them all.
    largest = max([int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")], default=cpus)
    cpus = free_cpus(max(1, min(cpus, largest)))
    if sieve.fit_rows == "scan":
        fitted = _fit_scan.options(num_cpus=cpus, **retry).remote(ctx_ref, step.index, sieve)
    else:
        fraction = min(1.0, sieve.sample_size(pool) / max(pool, 1))
        seed = sample_seed(sieve)
        pieces = [_sample.options(**retry).remote(ctx_ref, c, step.index, sieve.reads, seed, fraction) for c in chunks]
        fitted = _fit_sample.options(num_cpus=cpus, **retry).remote(sieve, *pieces)
    sieve = ray.get(fitted)
    size = len(pickle.dumps(sieve))
    if size > MAX_FITTED_BYTES:
        raise RuntimeError(f"sieve {step.op}: fitted state is {size >> 20} MiB (limit {MAX_FITTED_BYTES >> 20} MiB)")
    return sieve


def free_cpus(want: int, wait_s: float = FIT_WAIT_S) -> int:
    """`want` CPUs, or as many as are free after `wait_s` seconds (at least 1). The pools of the phase before may
    still be letting theirs go, and another job (or an actor pool that outlived its run) may hold some: a task that
    asks for more CPUs than will ever be free waits forever, one that asks for what is free runs on fewer threads."""
    deadline = time.monotonic() + wait_s
    while True:
        free = int(ray.available_resources().get("CPU", 0))
        if free >= want or time.monotonic() >= deadline:
            return max(1, min(want, free))
        time.sleep(0.2)


@ray.remote(num_cpus=1)
def _sample(ctx: SelectionContext, orders: list[int], before: int, reads: tuple[str, ...], seed: int,
            fraction: float) -> pa.Table:
    return pa.concat_tables([sample_filter(alive_rows(ctx, o, reads, before), seed, fraction) for o in orders])


@ray.remote(num_cpus=1)
def _fit_sample(sieve: Sieve, *pieces: pa.Table) -> Sieve:
    with _threads():
        sieve.fit(iter([sample_order(list(pieces))]))
    return sieve


@ray.remote(num_cpus=1)
def _fit_scan(ctx: SelectionContext, before: int, sieve: Sieve) -> Sieve:
    with _threads():
        sieve.fit(alive_rows(ctx, o, sieve.reads, before) for o in range(len(ctx.shards)))
    return sieve


def _threads():
    """Native thread pools (BLAS, OpenMP) sized to the CPUs Ray gave this task (Ray starts workers with one)."""
    import contextlib

    cpus = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=max(1, cpus))


# ---- grouped sieves ------------------------------------------------------------------------------------------------

def _grouped(ctx_ref, chunks: list[list[int]], step: Step, sieve_ref, parts: int, writers: int,
             needs_sizes: bool, retry: dict) -> dict[str, Any]:
    mapped = [_map_groups.options(num_returns=parts + 2, **retry).remote(ctx_ref, c, step.index, sieve_ref, parts)
              for c in chunks]
    rows_in = sum(ray.get([m[-2] for m in mapped]))
    if needs_sizes:
        # per-group counts summed in a task: O(#groups)
        sieve_ref = _plan.options(**retry).remote(sieve_ref, *[m[-1] for m in mapped])
    reduced = [_reduce_groups.options(num_returns=writers + 1, **retry).remote(ctx_ref, step, sieve_ref, writers,
                                                                       *[m[p] for m in mapped])
               for p in range(parts)]
    dropped = sum(ray.get([r[-1] for r in reduced]))
    files = sum(ray.get([_write.options(**retry).remote(ctx_ref, step, *[r[q] for r in reduced])
                         for q in range(writers)]))
    return {"describe": ray.get(sieve_ref).describe(),  # the fitted and planned sieve's, not the driver's copy
            "rows_in": rows_in, "dropped": dropped, "kept": rows_in - dropped, "files": files,
            "tasks": {"map": len(chunks), "reduce": parts, "write": writers}}


@ray.remote(num_cpus=1)
def _grouped_in_one_task(ctx: SelectionContext, step: Step, sieve: GroupSieve) -> dict[str, Any]:
    """The whole grouped step of a small pool: the same map, plan, reduce and write as the task graph, in one task."""
    *pieces, rows_in, sizes = map_groups(ctx, list(range(len(ctx.shards))), step.index, sieve, 1)
    if sieve.needs_group_sizes:
        sieve = plan_groups(sieve, sizes)
    decided, dropped = reduce_groups(ctx, step, sieve, 1, *pieces)
    return {"describe": sieve.describe(), "rows_in": rows_in, "dropped": dropped, "kept": rows_in - dropped,
            "files": write_decisions(ctx, step, decided), "tasks": {"one_task": 1}}


@ray.remote(num_cpus=1)
def _map_groups(ctx: SelectionContext, orders: list[int], before: int, sieve: GroupSieve, parts: int):
    return map_groups(ctx, orders, before, sieve, parts)


def map_groups(ctx: SelectionContext, orders: list[int], before: int, sieve: GroupSieve, parts: int) -> tuple:
    """The alive rows of shards `orders` with their group, split into `parts` by group hash; then the row count and
    (when the sieve plans on them) the per-group sizes."""
    rows = pa.concat_tables([alive_rows(ctx, o, sieve.reads, before) for o in orders])
    groups = np.asarray(sieve.group(rows), dtype=np.int64) if rows.num_rows else np.zeros(0, np.int64)
    rows = rows.append_column(GROUP, pa.array(groups))
    bucket = np.mod(groups, parts)
    values, counts = np.unique(groups, return_counts=True)
    sizes = pa.table({GROUP: pa.array(values), "n": pa.array(counts)}) if sieve.needs_group_sizes else None
    return (*[rows.filter(pa.array(bucket == p)) for p in range(parts)], rows.num_rows, sizes)


@ray.remote(num_cpus=1)
def _plan(sieve: GroupSieve, *sizes: pa.Table) -> GroupSieve:
    return plan_groups(sieve, *sizes)


def plan_groups(sieve: GroupSieve, *sizes: pa.Table) -> GroupSieve:
    """Whole-pool group sizes (summed from the map tasks) → `sieve.plan`; the planned sieve feeds every reduce."""
    table = pa.concat_tables(sizes) if sizes else pa.table({GROUP: pa.array([], pa.int64()), "n": pa.array([], pa.int64())})
    summed = table.group_by(GROUP).aggregate([("n", "sum")])
    sieve.plan(dict(zip(summed.column(GROUP).to_pylist(), summed.column("n_sum").to_pylist())))
    return sieve


@ray.remote(num_cpus=1)
def _reduce_groups(ctx: SelectionContext, step: Step, sieve: GroupSieve, writers: int, *pieces: pa.Table):
    return reduce_groups(ctx, step, sieve, writers, *pieces)


def reduce_groups(ctx: SelectionContext, step: Step, sieve: GroupSieve, writers: int, *pieces: pa.Table) -> tuple:
    """`sieve.select` on each whole group of the pieces (rows by row id); the decisions split by shard into
    `writers` parts, then the number of rows dropped."""
    rows = pa.concat_tables(pieces).sort_by([(GROUP, "ascending"), (ROW_ID, "ascending")])
    groups = rows.column(GROUP).to_numpy()
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]]) if groups.size else np.zeros(0, np.int64)
    out = []
    for start, end in zip(starts, np.r_[starts[1:], groups.size]):
        group = rows.slice(start, end - start)
        d = sieve.select(group)
        keep = np.asarray(d.keep, dtype=bool)
        if keep.size != group.num_rows:
            raise ValueError(f"sieve {step.op}: select returned {keep.size} decisions for {group.num_rows} rows")
        out.append(decision_rows(group.column(ROW_ID).to_numpy(), keep, d.detail, step, dict(d.columns)))
    decided = pa.concat_tables(out) if out else decision_rows(np.zeros(0, np.int64), np.zeros(0, bool), None, step,
                                                               _empty_published(step))
    dropped = decided.num_rows - decided.column(S.REASON).null_count
    bucket = np.mod(decided.column(ROW_ID).to_numpy() >> 32, writers)
    return (*[decided.filter(pa.array(bucket == q)) for q in range(writers)], dropped)


@ray.remote(num_cpus=1)
def _write(ctx: SelectionContext, step: Step, *pieces: pa.Table) -> int:
    return write_decisions(ctx, step, pa.concat_tables(pieces))


def _empty_published(step: Step) -> dict[str, pa.Array]:
    return {name: pa.array([], S.PUBLISHED_FIELDS[name]) for name in step.writes}


def bytes_per_row(fs, path: str) -> dict[str, float]:
    """Uncompressed bytes per row of each column of one signals file (sizes phase-B partitions)."""
    with iofs.open_sequential(fs, path) as f:
        meta = pq.ParquetFile(f).metadata
    rows = max(meta.num_rows, 1)
    sizes: dict[str, float] = {}
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        for c in range(rg.num_columns):
            col = rg.column(c)
            name = col.path_in_schema.split(".")[0]
            sizes[name] = sizes.get(name, 0.0) + col.total_uncompressed_size / rows
    return sizes
