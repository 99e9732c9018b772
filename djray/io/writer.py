"""Shaping governed rows into the output schemas: projection with defaults, column patches, footer metadata.

Used by phase C's final write (`djray.runtime.finalize`); pure pyarrow, no Ray, no filesystem.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from djray import schema as S


class AccountingError(RuntimeError):
    """rows_in != rows_kept + rows_rejected: a bug, never a data problem."""


def apply_patches(table: pa.Table, patches: list[pa.Table], src_shard: str) -> pa.Table:
    """Set the columns of the patch fragments on the rows with the same src_index; every alive row needs one."""
    if not patches:
        patch = None
    else:
        patch = pa.concat_tables(patches, promote_options="permissive")
        if S.SRC_SHARD in patch.column_names:
            patch = patch.drop_columns([S.SRC_SHARD])
    alive = table.column(S.REASON).is_null()
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


def project(table: pa.Table, schema: pa.Schema, footer: dict[bytes, bytes]) -> pa.Table:
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


def footer_metadata(output_sha256: str | None, djray_version: str, geometry: dict[str, Any] | None,
                    signals_sha256: str | None = None) -> dict[bytes, bytes]:
    """Parquet footer of every file djray writes: schema version, the output fingerprint (as `djray.config_sha256`),
    the signals fingerprint, and with vision the canonical geometry the patch indices refer to."""
    meta = {S.META_SCHEMA_VERSION: str(S.SCHEMA_VERSION).encode(), S.META_DJRAY_VERSION: djray_version.encode()}
    if output_sha256 is not None:
        meta[S.META_CONFIG_SHA256] = output_sha256.encode()
    if signals_sha256 is not None:
        meta[S.META_SIGNALS_SHA256] = signals_sha256.encode()
    if geometry is not None:
        meta[S.META_GEOMETRY] = json.dumps(geometry, sort_keys=True).encode()
    return meta


def evidence_histogram(data: pa.Table) -> dict[str, int]:
    """{number of evidence classes: images} over kept rows (ε = 0.7 with a softmax head gives 0 or 1 per image)."""
    lengths = pc.fill_null(pc.list_value_length(data.column(S.VIS_EVIDENCE)), 0).to_pylist()
    return {str(k): v for k, v in sorted(Counter(lengths).items())}
