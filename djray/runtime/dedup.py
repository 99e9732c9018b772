"""Duplicate keys, within and across shards: keep the first occurrence by (shard order, index), reject the rest.

Only rows still alive after the streaming stages compete for a key: a row already rejected (say, a corrupt image)
keeps its own reason and does not shadow a later usable copy, so the key survives whenever one copy is usable.

This is a global decision, so it runs after every shard is staged, over the key columns of the staged fragments only
(no image bytes), as a hash-partitioned map/reduce on Ray tasks: map tasks read key columns and split them by
hash(key) into P partitions; one reduce task per partition sorts by (key, shard order, index) and marks every row
whose key equals its predecessor's. Only the losing rows come back to the driver, as (src_shard, src_index, detail) —
a column of ids, never whole rows.
"""

from __future__ import annotations

import zlib
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import ray

from djray import schema as S
from djray.io.errors import task_args
from djray.io.fs import read_parquet

_COLUMNS = [S.KEY, S.SRC_SHARD, S.SRC_INDEX, S.SHARD_ORDER, S.REJECT_REASON]
ROWS_PER_PARTITION = 2_000_000  # a reduce task holds about this many keys
ROWS_PER_MAP_TASK = 500_000  # a map task reads the key columns of about this many rows (a small job: one task)
MAX_MAP_TASKS = 256


def _partition(paths: list[str], fs: pafs.FileSystem, parts: int) -> list[pa.Table] | pa.Table:
    keys = pa.concat_tables([read_parquet(fs, p, _COLUMNS) for p in paths])
    keys = keys.filter(pc.and_(pc.is_valid(keys.column(S.KEY)), pc.is_null(keys.column(S.REJECT_REASON))))
    if parts == 1:
        return keys
    # zlib.crc32, not hash(): str hashes differ between worker processes (PYTHONHASHSEED).
    bucket = np.fromiter((zlib.crc32(k.encode()) % parts for k in keys.column(S.KEY).to_pylist()),
                         dtype=np.int64, count=len(keys))
    return [keys.filter(pa.array(bucket == p)) for p in range(parts)]


def losers(keys: pa.Table) -> pa.Table:
    """Rows whose key appeared earlier in (shard order, index) order, with where the first one was."""
    keys = keys.sort_by([(S.KEY, "ascending"), (S.SHARD_ORDER, "ascending"), (S.SRC_INDEX, "ascending")])
    n = keys.num_rows
    if n < 2:
        return pa.table({"src_shard": pa.array([], pa.string()), "src_index": pa.array([], pa.int64()),
                         "detail": pa.array([], pa.string())})
    k = keys.column(S.KEY)
    same = np.concatenate([[False], pc.equal(k.slice(1), k.slice(0, n - 1)).to_numpy(zero_copy_only=False)])
    first = np.maximum.accumulate(np.where(same, 0, np.arange(n)))  # row index of each run's first member
    dup = np.flatnonzero(same)
    shards = keys.column(S.SRC_SHARD).to_pylist()
    index = keys.column(S.SRC_INDEX).to_numpy()
    return pa.table({
        "src_shard": pa.array([shards[i] for i in dup], pa.string()),
        "src_index": pa.array(index[dup], pa.int64()),
        "detail": pa.array([f"key first seen at {shards[first[i]]}#{index[first[i]]}" for i in dup], pa.string()),
    })


def _reduce(*parts: pa.Table) -> pa.Table:
    return losers(pa.concat_tables(parts))


def find_duplicate_keys(fragments: list[str], fs: pafs.FileSystem, total_rows: int = 0,
                        rows_per_map_task: int = ROWS_PER_MAP_TASK, rows_per_partition: int = ROWS_PER_PARTITION,
                        task_retries: int = 3) -> dict[str, dict[int, str]]:
    """Return {src_shard: {src_index: detail}} for every row that repeats an earlier key.

    Map tasks are sized by rows, not by fragments: a small job runs one map and one reduce task in a worker that is
    already up, instead of starting worker processes for a handful of tiny files.
    """
    if not fragments:
        return {}
    parts = max(1, min(256, total_rows // rows_per_partition + 1))
    n_maps = max(1, min(MAX_MAP_TASKS, len(fragments), -(-total_rows // rows_per_map_task)))
    groups = [fragments[i::n_maps] for i in range(n_maps)]
    map_task = ray.remote(num_cpus=1, **task_args(task_retries))(_partition).options(num_returns=parts)
    mapped = [map_task.remote(g, fs, parts) for g in groups]
    if parts == 1:
        mapped = [[ref] for ref in mapped]
    reduce_task = ray.remote(num_cpus=1)(_reduce)
    results = ray.get([reduce_task.remote(*[m[p] for m in mapped]) for p in range(parts)])
    out: dict[str, dict[int, str]] = defaultdict(dict)
    for table in results:
        for shard, idx, detail in zip(table.column("src_shard").to_pylist(), table.column("src_index").to_pylist(),
                                      table.column("detail").to_pylist()):
            out[shard][idx] = detail
    return dict(out)
