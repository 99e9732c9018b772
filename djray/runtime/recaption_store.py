"""The recaptions of an infogrowth `recaption: true` step on disk, and what later readers take from them.

    _djray/select/<i>-infogrowth-<step sha>/recaption/<shard>/<rows>.parquet   one fragment per staged batch
    _djray/select/<i>-infogrowth-<step sha>/recaptioned/<shard>.json          the shard's recaptions are complete

A fragment holds the rows of one shard that were below δ: `src_index`, `key`, the recaption (null when it failed),
the validation code (null when it passed), `recaption_score` (align') and the recaption's CLIP text embedding. They
live under the step's directory, so they share its fingerprint (the signals, the steps up to this one, the text
engine, model and prompt, the CLIP model): a re-run finds them and calls no LLM again. A row of a fragment that is
alive after the step was rescued (align < δ ≤ align'), which is all phase B's later steps and phase C need to know:

* later steps read the recaption's text embedding instead of phase A's (`rescued_text_embeddings`);
* phase C writes the recaption as the row's `caption` (djray.runtime.finalize).

No Ray import: these run inside tasks and in-process alike.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from djray import schema as S
from djray.io import fs as iofs
from djray.runtime.layout import Layout, flat

SCHEMA = pa.schema([pa.field(S.SRC_INDEX, pa.int64(), nullable=False), pa.field(S.KEY, pa.string()),
                    pa.field(S.RECAPTION, pa.string()), pa.field(S.RECAPTION_CODE, pa.string()),
                    pa.field(S.RECAPTION_SCORE, pa.float32()),
                    pa.field(S.RECAPTION_EMBEDDING, pa.list_(pa.float32()))])


def recaption_dir(layout: Layout, step_name: str, src_shard: str) -> str:
    return f"{layout.step_dir(step_name)}/recaption/{flat(src_shard)}"


def ledger_dir(layout: Layout, step_name: str) -> str:
    return f"{layout.step_dir(step_name)}/recaptioned"


def read_recaptions(fs: pafs.FileSystem, layout: Layout, step_name: str, src_shard: str,
                    columns: list[str] | None = None) -> pa.Table:
    """A shard's recaption rows (every column of `SCHEMA`, or `columns` besides src_index), sorted by src_index."""
    names = [f.name for f in SCHEMA] if columns is None else list(dict.fromkeys([S.SRC_INDEX, *columns]))
    files = iofs.list_files(fs, recaption_dir(layout, step_name, src_shard), ".parquet")
    parts = [iofs.read_parquet(fs, f, names) for f in files]
    table = pa.concat_tables(parts) if parts else SCHEMA.empty_table().select(names)
    return table.sort_by([(S.SRC_INDEX, "ascending")])


def _positions(rows: pa.Table, recaptions: pa.Table) -> pa.ChunkedArray:
    """For each row, the position of its recaption by src_index (null where it has none): `take` aligns by it."""
    return pc.index_in(rows.column(S.SRC_INDEX), value_set=recaptions.column(S.SRC_INDEX))


def attach(rows: pa.Table, recaptions: pa.Table, names: tuple[str, ...]) -> pa.Table:
    """`rows` with the recaption columns `names` appended by src_index (null where a row has no recaption)."""
    at = _positions(rows, recaptions)
    for name in names:
        rows = rows.append_column(name, recaptions.column(name).take(at))
    return rows


def rescued_text_embeddings(fs: pafs.FileSystem, layout: Layout, step_names: list[str], src_shard: str,
                            table: pa.Table) -> pa.Table:
    """`table` (rows alive after the recaption steps) with `clip_text_embedding` replaced by the recaption's for the
    rows those steps rescued."""
    for step_name in step_names:
        recaptions = read_recaptions(fs, layout, step_name, src_shard, [S.RECAPTION_EMBEDDING])
        if not recaptions.num_rows:
            continue
        new = recaptions.column(S.RECAPTION_EMBEDDING).take(_positions(table, recaptions))
        old = table.column(S.CLIP_TEXT_EMBEDDING)
        i = table.schema.get_field_index(S.CLIP_TEXT_EMBEDDING)
        table = table.set_column(i, S.CLIP_TEXT_EMBEDDING, pc.if_else(new.is_valid(), new.cast(old.type), old))
    return table
