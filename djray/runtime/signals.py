"""The signals store: phase A's output, one Parquet file per input shard, kept after the run.

While a shard streams through phase A, every batch's rows are staged as a fragment of signal columns (no image bytes,
no pixels) under `_djray/staging/<shard>/`; fragment names derive from the rows they hold, so a retried task rewrites
the same name. When the driver has seen all of a shard's rows, a seal task merges its fragments into
`signals/<stem>.parquet` (zstd, sorted by src_index, footer with the signals fingerprint), writes the shard's sealed
marker and removes its staging. Sealing overlaps with the streaming of other shards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from djray import schema as S
from djray.io import fs as iofs
from djray.runtime.layout import Layout
from djray.runtime.ledger import Ledger

_RENAMES = {S.REJECT_STAGE: S.STAGE, S.REJECT_REASON: S.REASON, S.REJECT_DETAIL: S.DETAIL}


class SealError(RuntimeError):
    """A shard's staged rows do not add up to the rows its reader produced (a bug or a lost fragment)."""


def as_signals(batch: pa.Table, schema: pa.Schema) -> pa.Table:
    """Phase A rows → the signals schema: reject triple renamed, internal and source-only columns dropped."""
    batch = batch.rename_columns([_RENAMES.get(c, c) for c in batch.column_names])
    n = batch.num_rows
    cols = [batch.column(f.name).cast(f.type) if f.name in batch.column_names else pa.nulls(n, f.type)
            for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


def stage_batch(batch: pa.Table, fs: pafs.FileSystem, layout: Layout, schema: pa.Schema) -> pa.Table:
    """Stage one batch: a fragment of signal columns per shard in it; return its summary (see `stage_by_shard`)."""
    def write(src_shard: str, rows: pa.Table) -> None:
        path = f"{layout.staging_dir(src_shard)}/{fragment_name(rows)}"
        iofs.write_table_atomic(fs, path, as_signals(rows, schema), compression="lz4")

    return stage_by_shard(batch, write)


def stage_by_shard(batch: pa.Table, write: Callable[[str, pa.Table], None]) -> pa.Table:
    """Call `write(src_shard, rows)` for each shard's real rows in a batch; return one summary row per shard:
    src_shard, rows (real rows staged), shard_rows (the shard's total when the batch held its end-of-shard marker
    row, else null). The driver counts these to know when a shard has streamed completely."""
    summary: dict[str, list[Any]] = {"src_shard": [], "rows": [], "shard_rows": []}
    shards = batch.column(S.SRC_SHARD)
    for src_shard in pc.unique(shards).to_pylist():
        part = batch.filter(pc.equal(shards, src_shard))
        is_marker = pc.equal(part.column(S.SRC_INDEX), -1)
        marker = part.filter(is_marker)
        rows = part.filter(pc.invert(is_marker))
        if rows.num_rows:
            write(src_shard, rows)
        summary["src_shard"].append(src_shard)
        summary["rows"].append(rows.num_rows)
        summary["shard_rows"].append(marker.column(S.SHARD_ROWS)[0].as_py() if marker.num_rows else None)
    return pa.table(summary, schema=STAGE_SUMMARY_SCHEMA)


def fragment_name(rows: pa.Table) -> str:
    """Named by the rows it holds: a retried task that stages the same rows rewrites the same file."""
    index = rows.column(S.SRC_INDEX)
    return f"{pc.min(index).as_py():012d}-{pc.max(index).as_py():012d}-{rows.num_rows}.parquet"


STAGE_SUMMARY_SCHEMA = pa.schema([
    pa.field("src_shard", pa.string()),
    pa.field("rows", pa.int64()),
    pa.field("shard_rows", pa.int64()),
])


def seal_shard(fs: pafs.FileSystem, layout: Layout, src_shard: str, rows_in: int, schema: pa.Schema,
               footer: dict[bytes, bytes], signals_sha: str) -> dict[str, Any]:
    """Merge a shard's fragments into its signals file, write its sealed marker, drop its staging; return the marker.

    A retried stage task may have left an overlapping fragment: rows are unique by src_index (phase A is
    deterministic per row, so copies are identical), and their number must equal the reader's row count.
    """
    staging = layout.staging_dir(src_shard)
    fragments = iofs.list_files(fs, staging, ".parquet")
    table = (pa.concat_tables([iofs.read_parquet(fs, f) for f in fragments]) if fragments
             else schema.empty_table())
    table = table.sort_by([(S.SRC_INDEX, "ascending")])
    index = table.column(S.SRC_INDEX).to_numpy()
    if index.size > 1 and (index[1:] == index[:-1]).any():
        first = pa.array([True, *(index[1:] != index[:-1])])
        table = table.filter(first)
        index = table.column(S.SRC_INDEX).to_numpy()
    if table.num_rows != rows_in or (rows_in and (index[0] != 0 or index[-1] != rows_in - 1)):
        raise SealError(f"shard {src_shard}: {table.num_rows} staged rows, its reader produced {rows_in}")
    table = table.cast(schema.with_metadata(footer))
    iofs.write_table_atomic(fs, layout.signals(src_shard), table, compression="zstd")
    marker = {"shard": src_shard, "rows_in": rows_in, "rows_alive": table.column(S.REASON).null_count,
              "signals_sha256": signals_sha}
    Ledger(fs, layout.sealed_dir(signals_sha)).write(src_shard, marker)
    iofs.delete_dir(fs, staging)
    return marker


def seal_shards_at(output_uri: str, storage: iofs.Storage, shards: list[tuple[str, int]], schema: pa.Schema,
                   footer: dict[bytes, bytes], signals_sha: str) -> list[dict[str, Any]]:
    """Body of a seal task: `seal_shard` for each (src_shard, rows_in)."""
    fs, root = iofs.resolve(output_uri, storage)
    layout = Layout(root)
    return [seal_shard(fs, layout, s, rows_in, schema, footer, signals_sha) for s, rows_in in shards]


def read_signals(fs: pafs.FileSystem, path: str, columns: list[str] | None = None) -> pa.Table:
    """One shard's signals (optionally only some columns; absent optional columns come back as nulls)."""
    with iofs.open_sequential(fs, path) as f:
        pf = pq.ParquetFile(f, pre_buffer=True)
        if columns is None:
            return pf.read()
        present = [c for c in columns if c in pf.schema_arrow.names]
        table = pf.read(columns=present)
    for c in columns:
        if c not in present:
            table = table.append_column(c, pa.nulls(table.num_rows, S.column_type(c) or pa.null()))
    return table.select(columns)
