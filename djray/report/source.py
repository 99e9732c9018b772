"""Read access to one djray output (local or S3) for the report: its manifest, and column batches streamed file by
file and row group by row group, so memory stays bounded by one row group of the selected columns."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from djray import schema as S
from djray.io import fs as iofs
from djray.runtime.layout import Layout

KINDS = ("data", "rejects", "signals")
# "same image bytes as key K (shard#index)", "near-duplicate of key K (shard#index, cos 0.97)",
# "key first seen at shard#index"
_TWIN = (re.compile(r"key (?P<key>\S+) \((?P<shard>.+?)#(?P<index>\d+)[,)]"),
         re.compile(r"first seen at (?P<shard>\S+)#(?P<index>\d+)$"))


class ReportError(Exception):
    """The output cannot be reported on (no manifest: not a djray output, or a run that never started)."""


class Output:
    """One djray output directory: `Output(uri, storage)`; `scan(kind, columns)` yields record batches."""

    def __init__(self, uri: str, storage: iofs.Storage | None = None, stat_files: int | None = None):
        self.uri = uri
        self.stat_files = stat_files  # statistics from at most this many files per kind, spread evenly (None: all)
        self.fs, self.root = iofs.resolve(uri, storage or iofs.Storage())
        self.layout = Layout(self.root)
        manifest = iofs.read_json(self.fs, self.layout.manifest)
        if manifest is None:
            raise ReportError(f"{uri}: no manifest.json (not a djray output, or its first run never started)")
        self.manifest = manifest
        self._files: dict[str, list[str]] = {}
        self._names: dict[str, list[str]] = {}

    def files(self, kind: str) -> list[str]:
        if kind not in self._files:
            self._files[kind] = iofs.list_files(self.fs, f"{self.root}/{kind}", ".parquet")
        return self._files[kind]

    def column_names(self, kind: str) -> list[str]:
        """Columns of this kind of file (every file of a kind has the same schema; [] when there are none)."""
        if kind not in self._names:
            files = self.files(kind)
            self._names[kind] = []
            if files:
                with iofs.open_sequential(self.fs, files[0]) as f:
                    self._names[kind] = pq.read_schema(f).names
        return self._names[kind]

    def has(self, kind: str, column: str) -> bool:
        return column in self.column_names(kind)

    def stat_paths(self, kind: str) -> list[str]:
        """The files statistics are computed from: all, or `stat_files` of them evenly spread over the list."""
        files = self.files(kind)
        if self.stat_files is None or len(files) <= self.stat_files:
            return files
        k = max(self.stat_files, 1)
        return [files[(i * len(files)) // k] for i in range(k)]

    def scan(self, kind: str, columns: list[str], batch_rows: int = 8192) -> Iterator[pa.RecordBatch]:
        """Batches of `columns` (those the files have) over the statistics files of `kind`, a row group at a time."""
        present = [c for c in columns if self.has(kind, c)]
        if not present:
            return
        for path in self.stat_paths(kind):
            yield from self.scan_file(path, present, batch_rows)

    def scan_file(self, path: str, columns: list[str], batch_rows: int = 8192) -> Iterator[pa.RecordBatch]:
        with iofs.open_sequential(self.fs, path) as f:
            pf = pq.ParquetFile(f)
            present = [c for c in columns if c in pf.schema_arrow.names]
            yield from pf.iter_batches(batch_size=batch_rows, columns=present)

    def head(self, path: str, columns: list[str], n: int) -> pa.Table:
        """The first `n` rows of one file (reads its first row group(s) only)."""
        with iofs.open_sequential(self.fs, path) as f:
            pf = pq.ParquetFile(f)
            present = [c for c in columns if c in pf.schema_arrow.names]
            batch = next(pf.iter_batches(batch_size=n, columns=present), None)
        return pa.Table.from_batches([batch]) if batch is not None else pa.table({})

    def rows_at(self, path: str, columns: list[str], indices: list[int]) -> pa.Table:
        """Rows of one file whose src_index is in `indices` (row groups skipped by their statistics)."""
        if not iofs.exists(self.fs, path):
            return pa.table({})
        with iofs.open_sequential(self.fs, path) as f:
            pf = pq.ParquetFile(f, pre_buffer=True)
            present = [c for c in columns if c in pf.schema_arrow.names]
            wanted = pa.array(sorted(set(indices)), pa.int64())
            parts = []
            for g in range(pf.num_row_groups):
                stats = pf.metadata.row_group(g).column(pf.schema_arrow.get_field_index(S.SRC_INDEX)).statistics
                if stats is not None and stats.has_min_max and not any(stats.min <= i <= stats.max for i in indices):
                    continue
                t = pf.read_row_group(g, columns=sorted(set(present) | {S.SRC_INDEX}))
                parts.append(t.filter(pc.is_in(t.column(S.SRC_INDEX), wanted)).select(present))
        return pa.concat_tables(parts) if parts else pa.table({})

    def find_row(self, src_shard: str, src_index: int, columns: list[str]) -> tuple[str, dict] | None:
        """A row by its source position: ("kept", row) from data/ or ("rejected", row) from rejects/, else None."""
        for label, path in (("kept", self.layout.data(src_shard)), ("rejected", self.layout.rejects(src_shard))):
            t = self.rows_at(path, columns, [src_index])
            if t.num_rows:
                return label, t.slice(0, 1).to_pylist()[0]
        return None


def twin_of(detail: str | None) -> tuple[str | None, str, int] | None:
    """(key, src_shard, src_index) of the row a dedup reject's detail names as the one kept, if it names one."""
    for pattern in _TWIN:
        m = pattern.search(detail or "")
        if m:
            return m.groupdict().get("key"), m["shard"], int(m["index"])
    return None
