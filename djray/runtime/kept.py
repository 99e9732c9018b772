"""Phase C's first half: the rows still kept after the selection, fed to the ops that must see kept rows only (the
text branch: the LLM never rewrites a caption the sieves dropped), and the column patches those ops return.

Kept rows are read from the signals store minus every step's drops (no image bytes); each batch's new columns are
staged as a patch fragment (src_index + the op's columns) under `_djray/out/<output sha>/patches/<shard>/`, named by
the rows they hold so a retried task rewrites the same name.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from djray import schema as S
from djray.io import fs as iofs
from djray.runtime.decisions import SelectionContext, alive_rows
from djray.runtime.recaption_store import read_recaptions
from djray.runtime.signals import fragment_name, stage_by_shard

RESCUED = "recaptioned"  # op-facing reject reason of a rescued row in the kept-rows pass (never written)


def read_kept_rows(ctx: SelectionContext, order: int, columns: tuple[str, ...],
                   rows_per_block: int) -> Iterator[pa.Table]:
    """A shard's kept rows in blocks, in the op-facing layout (reject columns null), then its end-of-shard marker."""
    kept = alive_rows(ctx, order, columns, len(ctx.steps))
    shard = ctx.shards[order]
    kept = _skip_rescued(ctx, order, op_layout(shard, kept.select([S.KEY, S.SRC_INDEX, *columns])))
    yield from blocks_then_marker(shard, kept, rows_per_block)


def op_layout(shard: str, rows: pa.Table) -> pa.Table:
    """Rows read back from the signals store (key, src_index, columns…) in the layout the ops see: `src_shard` and the
    reject / shard-row bookkeeping columns added, all null."""
    rows = rows.append_column(S.SRC_SHARD, pa.array([shard] * rows.num_rows, pa.string()))
    for name in (S.REJECT_STAGE, S.REJECT_REASON, S.REJECT_DETAIL, S.SHARD_ROWS):
        rows = rows.append_column(name, pa.nulls(rows.num_rows, pa.int64() if name == S.SHARD_ROWS else pa.string()))
    return rows


def blocks_then_marker(shard: str, rows: pa.Table, rows_per_block: int) -> Iterator[pa.Table]:
    """One shard's op-layout rows in blocks, then its end-of-shard marker (the row count the driver waits for)."""
    for start in range(0, rows.num_rows, rows_per_block):
        yield rows.slice(start, rows_per_block)
    marker: dict[str, list[Any]] = {name: [None] for name in rows.column_names}
    marker.update({S.SRC_SHARD: [shard], S.SRC_INDEX: [-1], S.REJECT_STAGE: [S.Stage.READ],
                   S.REJECT_REASON: [S.END_OF_SHARD], S.SHARD_ROWS: [rows.num_rows]})
    yield pa.table(marker, schema=rows.schema)


def _skip_rescued(ctx: SelectionContext, order: int, kept: pa.Table) -> pa.Table:
    """Rows an infogrowth recaption rescued already carry an LLM caption: the ops see them as not alive (they write
    nulls there, and the final write sets the recaption), so the text branch never rewrites a recaption."""
    fs, layout = ctx.out()
    for step in ctx.steps:
        if step.recaption:
            t = read_recaptions(fs, layout, step.name, ctx.shards[order], [S.RECAPTION_SCORE])
            rescued = t.filter(pc.is_valid(t.column(S.RECAPTION_SCORE))).column(S.SRC_INDEX)
            mask = pc.is_in(kept.column(S.SRC_INDEX), value_set=rescued)
            i = kept.schema.get_field_index(S.REJECT_REASON)
            kept = kept.set_column(i, S.REJECT_REASON, pc.if_else(mask, RESCUED, kept.column(S.REJECT_REASON)))
    return kept


def stage_patches(batch: pa.Table, ctx: SelectionContext, output_sha: str, columns: tuple[str, ...]) -> pa.Table:
    """Write one batch's op columns as a patch fragment per shard; return its summary (see `stage_by_shard`)."""
    fs, layout = ctx.out()

    def write(src_shard: str, rows: pa.Table) -> None:
        path = f"{layout.patch_dir(output_sha, src_shard)}/{fragment_name(rows)}"
        iofs.write_table_atomic(fs, path, rows.select([S.SRC_INDEX, *columns]), compression="lz4")

    return stage_by_shard(batch, write)
