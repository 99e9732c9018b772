"""The governed writer: staging fragments, per-shard finalisation, and the output layout.

Output layout (ARCHITECTURE §2) plus djray's own bookkeeping under `_djray/` (ignored by Parquet dataset readers,
which skip names starting with `_`):

    OUTPUT/data/<shard stem>.parquet       kept rows, sorted by src_index
    OUTPUT/rejects/<shard stem>.parquet    rejected rows with stage / reason / detail
    OUTPUT/manifest.json
    OUTPUT/_djray/job.json                 config hash of the job that owns this output
    OUTPUT/_djray/staging/<shard>/*.parquet fragments written while a shard streams through the stages
    OUTPUT/_djray/staged/<shard>.json      the shard streamed completely: its fragment list and row count
    OUTPUT/_djray/patches/<shard>/*.parquet column patches (src_index + new columns) from ops on kept rows (text)
    OUTPUT/_djray/patched/<shard>.json     every kept row of the shard has its patch: the patch fragment list
    OUTPUT/_djray/done/<shard>.json        the shard's final files are written: its counts
    OUTPUT/_djray/models/<op>.json         what a model-loading op loaded (sources, checksums), for the manifest

Exactly-once: final files are only written from a complete fragment set, under deterministic names, atomically;
a re-run rewrites the same names. Fragments of an interrupted attempt are never listed in a marker and are removed.
Ray retries a failed staging task (storage failures, a dead worker): the retried attempt writes its fragments under
new names, and only the fragments whose summary rows reached the driver are listed in the marker — Ray delivers each
output of a retried streaming task once — so the extra copies are ignored, then removed with the staging directory.
"""

from __future__ import annotations

import json
import posixpath
import uuid
from collections import Counter
from typing import Any
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from djray import schema as S
from djray.io import fs as iofs


class Layout:
    def __init__(self, root: str):
        self.root = root.rstrip("/")
        self.state = f"{self.root}/_djray"

    @staticmethod
    def stem(src_shard: str) -> str:
        for suffix in (".tar.gz", ".tgz", ".tar", ".parquet"):
            if src_shard.endswith(suffix):
                return src_shard[: -len(suffix)]
        return src_shard

    def data(self, src_shard: str) -> str:
        return f"{self.root}/data/{self.stem(src_shard)}.parquet"

    def rejects(self, src_shard: str) -> str:
        return f"{self.root}/rejects/{self.stem(src_shard)}.parquet"

    @property
    def manifest(self) -> str:
        return f"{self.root}/manifest.json"

    @property
    def job(self) -> str:
        return f"{self.state}/job.json"

    def _flat(self, src_shard: str) -> str:
        return quote(src_shard, safe="")

    def staging_dir(self, src_shard: str) -> str:
        return f"{self.state}/staging/{self._flat(src_shard)}"

    def staged_marker(self, src_shard: str) -> str:
        return f"{self.state}/staged/{self._flat(src_shard)}.json"

    def done_marker(self, src_shard: str) -> str:
        return f"{self.state}/done/{self._flat(src_shard)}.json"

    def patch_dir(self, src_shard: str) -> str:
        return f"{self.state}/patches/{self._flat(src_shard)}"

    def patched_marker(self, src_shard: str) -> str:
        return f"{self.state}/patched/{self._flat(src_shard)}.json"

    def model_record(self, op_name: str) -> str:
        return f"{self.state}/models/{op_name}.json"


# ---- staging (runs inside Ray tasks) ---------------------------------------------------------------------------


def stage_batch(batch: pa.Table, fs: pafs.FileSystem, layout: Layout,
                patch_columns: tuple[str, ...] | None = None) -> pa.Table:
    """Write one batch's rows as a fragment per shard; return one summary row per shard in the batch.

    Summary columns: src_shard, fragment (path or null), rows (real rows written), shard_rows (total rows of the
    shard when this batch held its end-of-shard marker, else null). With `patch_columns`, only `src_index` and those
    columns are written, as a column patch under the shard's patch directory.
    """
    if S.PIXELS in batch.column_names:
        batch = batch.drop_columns([S.PIXELS])
    if patch_columns is not None:
        batch = batch.select([S.SRC_SHARD, S.SRC_INDEX, S.SHARD_ROWS, *patch_columns])
    directory = layout.patch_dir if patch_columns is not None else layout.staging_dir
    summary: dict[str, list[Any]] = {"src_shard": [], "fragment": [], "rows": [], "shard_rows": []}
    shards = batch.column(S.SRC_SHARD)
    for src_shard in pc.unique(shards).to_pylist():
        part = batch.filter(pc.equal(shards, src_shard))
        is_marker = pc.equal(part.column(S.SRC_INDEX), -1)
        marker = part.filter(is_marker)
        rows = part.filter(pc.invert(is_marker))
        fragment = None
        if rows.num_rows:
            fragment = f"{directory(src_shard)}/{uuid.uuid4().hex}.parquet"
            iofs.write_table_atomic(fs, fragment, rows.drop_columns([S.SHARD_ROWS]), compression="none")
        summary["src_shard"].append(src_shard)
        summary["fragment"].append(fragment)
        summary["rows"].append(rows.num_rows)
        summary["shard_rows"].append(marker.column(S.SHARD_ROWS)[0].as_py() if marker.num_rows else None)
    return pa.table(summary, schema=STAGE_SUMMARY_SCHEMA)


STAGE_SUMMARY_SCHEMA = pa.schema([
    pa.field("src_shard", pa.string()),
    pa.field("fragment", pa.string()),
    pa.field("rows", pa.int64()),
    pa.field("shard_rows", pa.int64()),
])


# ---- finalisation (one Ray task per shard) ---------------------------------------------------------------------


def read_staged_shard(fs: pafs.FileSystem, staged: dict[str, Any], duplicates: dict[int, str],
                      columns: list[str] | None = None) -> pa.Table:
    """A staged shard's rows sorted by src_index, with duplicate-key decisions applied."""
    fragments = [iofs.read_parquet(fs, f, columns) for f in staged["fragments"]]
    if fragments:
        table = pa.concat_tables(fragments, promote_options="permissive")
    else:
        table = S.SOURCE_SCHEMA.empty_table().select(columns) if columns else S.SOURCE_SCHEMA.empty_table()
    table = table.sort_by([(S.SRC_INDEX, "ascending")])
    return _reject_duplicates(table, duplicates) if duplicates else table


def finalize_shard(fs: pafs.FileSystem, layout: Layout, src_shard: str, staged: dict[str, Any],
                   duplicates: dict[int, str], *, vision: bool, footer: dict[bytes, bytes],
                   compression: str, patched: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge a shard's fragments, apply global decisions and column patches, write its data and rejects files;
    return its counts.

    `duplicates` maps src_index → detail for rows that lose a duplicate-key tie. `patched` lists the column-patch
    fragments written by ops that ran on kept rows only (the text branch); every kept row must have one.
    """
    table = read_staged_shard(fs, staged, duplicates)
    if patched is not None:
        table = _apply_patches(table, [iofs.read_parquet(fs, f) for f in patched["fragments"]], src_shard)

    alive = table.column(S.REJECT_REASON).is_null()
    data = _project(table.filter(alive), S.data_schema(vision), footer)
    rejected = table.filter(pc.invert(alive))
    rejects = _project(
        rejected.rename_columns([{S.REJECT_STAGE: S.STAGE, S.REJECT_REASON: S.REASON, S.REJECT_DETAIL: S.DETAIL}.get(c, c)
                                 for c in rejected.column_names]),
        S.rejects_schema(vision), footer)

    rows_in = staged["rows_in"]
    sources = Counter(data.column(S.CAPTION_SOURCE).to_pylist())
    counts = {
        "shard": src_shard,
        "status": "done",
        "rows_in": rows_in,
        "rows_kept": data.num_rows,
        "rows_rejected": rejects.num_rows,
        "rejected_by_reason": dict(sorted(Counter(rejects.column(S.REASON).to_pylist()).items())),
        "data_file": posixpath.relpath(layout.data(src_shard), layout.root),
        "rejects_file": posixpath.relpath(layout.rejects(src_shard), layout.root),
        "caption_source": dict(sorted(sources.items())),
    }
    if S.TEXT_FALLBACK_REASON in table.column_names:
        fallbacks = table.filter(alive).column(S.TEXT_FALLBACK_REASON).drop_null().to_pylist()
        counts["text_fallback_by_reason"] = dict(sorted(Counter(fallbacks).items()))
    if data.num_rows + rejects.num_rows != rows_in or table.num_rows != rows_in:
        raise AccountingError(
            f"shard {src_shard}: rows_in {rows_in} != kept {data.num_rows} + rejected {rejects.num_rows}"
            f" (staged rows {table.num_rows})")
    iofs.write_table_atomic(fs, layout.data(src_shard), data, compression, uncompressed=(S.IMAGE,))
    iofs.write_table_atomic(fs, layout.rejects(src_shard), rejects, compression, uncompressed=(S.IMAGE,))
    return counts


def finalize_shards_at(output_uri: str, storage: iofs.Storage, shards: list[tuple[str, dict[str, Any],
                       dict[int, str], dict[str, Any] | None]], vision: bool, footer: dict[bytes, bytes],
                       compression: str) -> list[dict[str, Any]]:
    """The body of a final-write Ray task: `finalize_shard` for each (src_shard, staged, duplicates, patched), in
    order; returns their counts. It lives here, not in the pipeline module, so a fresh worker imports only pyarrow and
    this module before writing."""
    fs, root = iofs.resolve(output_uri, storage)
    layout = Layout(root)
    return [finalize_shard(fs, layout, src_shard, staged, duplicates, vision=vision, footer=footer,
                           compression=compression, patched=patched)
            for src_shard, staged, duplicates, patched in shards]


class AccountingError(RuntimeError):
    """rows_in != rows_kept + rows_rejected: a bug, never a data problem."""


def _apply_patches(table: pa.Table, patches: list[pa.Table], src_shard: str) -> pa.Table:
    """Set the columns of the patch fragments on the rows with the same src_index; every alive row needs one."""
    if not patches:
        patch = None
    else:
        patch = pa.concat_tables(patches, promote_options="permissive").drop_columns([S.SRC_SHARD])
    alive = table.column(S.REJECT_REASON).is_null()
    n_alive = pc.sum(alive.cast(pa.int64())).as_py() or 0
    if patch is None:
        if n_alive:
            raise AccountingError(f"shard {src_shard}: {n_alive} kept rows but no column patches")
        return table
    pos = pc.index_in(table.column(S.SRC_INDEX), value_set=patch.column(S.SRC_INDEX))
    covered = pc.sum(pc.and_(alive, pos.is_valid()).cast(pa.int64())).as_py() or 0
    if covered != n_alive or patch.num_rows != n_alive:
        raise AccountingError(f"shard {src_shard}: {n_alive} kept rows, {patch.num_rows} patched, {covered} matched")
    for name in patch.column_names:
        if name != S.SRC_INDEX:
            table = _set(table, name, patch.column(name).take(pos))
    return table


def _set(table: pa.Table, name: str, values) -> pa.Table:
    i = table.schema.get_field_index(name)
    return table.set_column(i, name, values) if i >= 0 else table.append_column(name, values)


def _reject_duplicates(table: pa.Table, duplicates: dict[int, str]) -> pa.Table:
    idx = table.column(S.SRC_INDEX).to_numpy()
    hit = np.isin(idx, np.fromiter(duplicates.keys(), dtype=np.int64))
    # A row already rejected earlier keeps its first reason; duplicates only reject rows that are still alive.
    hit &= table.column(S.REJECT_REASON).is_null().to_numpy(zero_copy_only=False)
    if not hit.any():
        return table
    mask = pa.array(hit)
    details = pa.array([duplicates.get(int(i)) for i in idx], type=pa.string())
    n = table.num_rows
    updates = {
        S.REJECT_STAGE: pa.array([S.Stage.DEDUP] * n, type=pa.string()),
        S.REJECT_REASON: pa.array([S.Reason.DUPLICATE_KEY] * n, type=pa.string()),
        S.REJECT_DETAIL: details,
    }
    for name, value in updates.items():
        i = table.schema.get_field_index(name)
        table = table.set_column(i, name, pc.if_else(mask, value, table.column(name)))
    return table


def _project(table: pa.Table, schema: pa.Schema, footer: dict[bytes, bytes]) -> pa.Table:
    """Shape rows into an output schema: defaults for governed columns, nulls for absent ones, footer metadata."""
    n = table.num_rows
    cols = []
    for field in schema:
        if field.name in table.column_names:
            col = table.column(field.name).cast(field.type)
        else:
            col = pa.nulls(n, type=field.type)
        # Rows no text op touched (no text branch, or rejected rows) keep their source caption.
        if field.name == S.CAPTION and S.CAPTION_RAW in table.column_names:
            col = pc.coalesce(col, table.column(S.CAPTION_RAW))
        elif field.name == S.CAPTION_SOURCE:
            col = pc.coalesce(col, pa.scalar("original", pa.string()))
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=schema.with_metadata(footer))


def footer_metadata(config_sha256: str, djray_version: str, geometry: dict[str, Any] | None) -> dict[bytes, bytes]:
    meta = {
        S.META_SCHEMA_VERSION: str(S.SCHEMA_VERSION).encode(),
        S.META_CONFIG_SHA256: config_sha256.encode(),
        S.META_DJRAY_VERSION: djray_version.encode(),
    }
    if geometry is not None:
        meta[S.META_GEOMETRY] = json.dumps(geometry, sort_keys=True).encode()
    return meta
