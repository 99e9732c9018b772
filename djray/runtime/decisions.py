"""Phase-B data on disk: the rows a step sees, and the per-shard decision files each step writes.

A step's decision file for a shard (`_djray/select/<selection sha>/<i>-<op>/<shard>.parquet`, schema
`schema.decision_schema`) holds the rows the step dropped (reason not null) and, when the step publishes columns,
every row that reached it with their values. No file means the step neither dropped nor published anything there.
These functions run inside Ray tasks and in-process alike (no Ray import).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from djray import schema as S
from djray.io import fs as iofs
from djray.ops.sieve.base import ROW_ID
from djray.runtime.layout import Layout
from djray.runtime.recaption_store import rescued_text_embeddings
from djray.runtime.signals import read_signals

SHARD_BITS = 32


@dataclass(frozen=True)
class Step:
    index: int
    op: str
    reason: str
    writes: tuple[str, ...] = ()
    sha: str = ""  # fingerprint of the signals and the steps up to this one (fingerprint.step_sha256s)
    recaption: bool = False  # re-captions rows below δ (infogrowth): later steps read rescued rows' new text embedding

    @property
    def name(self) -> str:
        return f"{self.index}-{self.op}-{self.sha[:12]}"

    @property
    def stage(self) -> str:
        return S.Stage.sieve(self.op)


@dataclass(frozen=True)
class SelectionContext:
    """What every phase-B and phase-C task needs to find signals and decisions; picklable and small (O(#shards))."""

    output_uri: str
    signals_uri: str  # root of the output whose signals/ are read: this output, or `signals.from`
    storage: iofs.Storage
    shards: tuple[str, ...]  # the shard order: position = shard order in row ids
    selection_sha: str
    steps: tuple[Step, ...]
    task_retries: int = 3  # Ray reruns of a task that failed on storage (djray.io.errors.task_args)

    def out(self) -> tuple[pafs.FileSystem, Layout]:
        fs, root = iofs.resolve(self.output_uri, self.storage)
        return fs, Layout(root)

    def sig(self) -> tuple[pafs.FileSystem, Layout]:
        fs, root = iofs.resolve(self.signals_uri, self.storage)
        return fs, Layout(root)


def row_ids(order: int, src_index: np.ndarray) -> np.ndarray:
    return (np.int64(order) << SHARD_BITS) | src_index.astype(np.int64)


def split_row_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return ids >> SHARD_BITS, ids & ((1 << SHARD_BITS) - 1)


def read_decisions(ctx: SelectionContext, step: Step, src_shard: str) -> pa.Table | None:
    fs, layout = ctx.out()
    try:
        return iofs.read_parquet(fs, layout.step_decisions(step.name, src_shard))
    except FileNotFoundError:
        return None


def alive_rows(ctx: SelectionContext, order: int, columns: tuple[str, ...], before: int) -> pa.Table:
    """A shard's rows alive after phase A and steps 0..before-1, with the runtime columns and `columns`: signal
    columns, or columns an earlier step published (read from its decision file, e.g. SemDeDup's M for its cut).
    After a re-captioning step, a row it rescued reads its recaption's `clip_text_embedding`."""
    src_shard = ctx.shards[order]
    fs, layout = ctx.sig()
    earlier = ctx.steps[:before]
    published = {c: step for step in earlier for c in step.writes if c in columns}
    wanted = list(dict.fromkeys([S.KEY, S.SRC_INDEX, S.REASON, *(c for c in columns if c not in published)]))
    table = read_signals(fs, layout.signals(src_shard), wanted)
    table = table.filter(pc.is_null(table.column(S.REASON))).drop_columns([S.REASON])
    decided_by: dict[str, pa.Table | None] = {}
    for step in earlier:
        decided = decided_by[step.name] = read_decisions(ctx, step, src_shard)
        if decided is not None:
            dropped = decided.filter(pc.is_valid(decided.column(S.REASON))).column(S.SRC_INDEX)
            table = table.filter(pc.invert(pc.is_in(table.column(S.SRC_INDEX), value_set=dropped)))
    for c, step in published.items():
        decided = decided_by[step.name]
        if decided is None:  # no row of this shard reached that step, so none is alive now
            table = table.append_column(c, pa.nulls(table.num_rows, S.PUBLISHED_FIELDS[c]))
        else:
            at = pc.index_in(table.column(S.SRC_INDEX), value_set=decided.column(S.SRC_INDEX))
            table = table.append_column(c, decided.column(c).take(at))
    recaptioned = [step.name for step in earlier if step.recaption]
    if recaptioned and S.CLIP_TEXT_EMBEDDING in columns:
        table = rescued_text_embeddings(*ctx.out(), recaptioned, src_shard, table)
    ids = row_ids(order, table.column(S.SRC_INDEX).to_numpy())
    shard_col = pa.DictionaryArray.from_arrays(pa.array(np.zeros(table.num_rows, np.int32)), pa.array([src_shard]))
    return table.append_column(ROW_ID, pa.array(ids)).append_column(S.SRC_SHARD, shard_col)


def write_decisions(ctx: SelectionContext, step: Step, rows: pa.Table) -> int:
    """Write a step's decision rows (with `_row_id`, reason, detail, published columns), one file per shard they
    belong to; returns the number of files written."""
    if rows.num_rows == 0:
        return 0
    fs, layout = ctx.out()
    schema = S.decision_schema(step.writes)
    orders, index = split_row_ids(rows.column(ROW_ID).to_numpy())
    rows = rows.append_column(S.SRC_INDEX, pa.array(index)).append_column("_order", pa.array(orders))
    files = 0
    for order in np.unique(orders):
        part = rows.filter(pc.equal(rows.column("_order"), int(order))).sort_by([(S.SRC_INDEX, "ascending")])
        cols = [part.column(f.name).cast(f.type) for f in schema]
        path = layout.step_decisions(step.name, ctx.shards[int(order)])
        iofs.write_table_atomic(fs, path, pa.Table.from_arrays(cols, schema=schema), compression="zstd")
        files += 1
    return files


def decision_rows(ids: np.ndarray, keep: np.ndarray, details: list[str | None] | None, step: Step,
                  published: dict[str, pa.Array]) -> pa.Table:
    """The rows of one decision to persist: every row when the step publishes columns, else the dropped ones."""
    reasons = pa.array(np.where(keep, None, step.reason), pa.string())
    detail = pa.array(details if details is not None else [None] * len(ids), pa.string())
    detail = pc.if_else(pa.array(keep), pa.nulls(len(ids), pa.string()), detail)
    table = pa.table({ROW_ID: pa.array(ids, pa.int64()), S.REASON: reasons, S.DETAIL: detail,
                      **{name: published[name] for name in step.writes}})
    return table if step.writes else table.filter(pa.array(~keep))
