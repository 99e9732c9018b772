"""Phase A's signals store: staging by shard, sealing with duplicate fragments from retried tasks, and refusals."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from djray import schema as S
from djray.runtime.layout import Layout
from djray.runtime.ledger import Ledger
from djray.runtime.signals import SealError, as_signals, read_signals, seal_shard, stage_batch


def _batch(shard: str, indices: list[int], total: int | None = None) -> pa.Table:
    rows = [{S.KEY: f"{shard}-{i}", S.SRC_SHARD: shard, S.SRC_INDEX: i, S.IMAGE: b"bytes", S.CAPTION_RAW: f"c{i}",
             S.REJECT_STAGE: "decode" if i == 1 else None, S.REJECT_REASON: "corrupt_image" if i == 1 else None,
             S.REJECT_DETAIL: "bad" if i == 1 else None, S.SHARD_ROWS: None} for i in indices]
    if total is not None:
        rows.append({S.KEY: None, S.SRC_SHARD: shard, S.SRC_INDEX: -1, S.REJECT_STAGE: "read",
                     S.REJECT_REASON: S.END_OF_SHARD, S.SHARD_ROWS: total})
    return pa.Table.from_pylist(rows, schema=S.SOURCE_SCHEMA)


def test_signals_rows_never_carry_image_bytes_and_rename_the_reject_triple():
    t = as_signals(_batch("a.tar", [0, 1]), S.signals_schema())
    assert t.schema == S.signals_schema() and "image" not in t.column_names
    assert t.column(S.REASON).to_pylist() == [None, "corrupt_image"] and t.column(S.STAGE).to_pylist() == [None,
                                                                                                             "decode"]


def test_stage_summaries_and_seal_with_a_retried_overlapping_fragment(tmp_path):
    fs, layout, schema = pafs.LocalFileSystem(), Layout(str(tmp_path)), S.signals_schema()
    mixed = pa.concat_tables([_batch("a.tar", [0, 1, 2]), _batch("b.tar", [0], total=1)])
    summary = stage_batch(mixed, fs, layout, schema).to_pylist()
    assert summary == [{"src_shard": "a.tar", "rows": 3, "shard_rows": None},
                       {"src_shard": "b.tar", "rows": 1, "shard_rows": 1}]
    stage_batch(_batch("a.tar", [2, 3], total=4), fs, layout, schema)
    stage_batch(_batch("a.tar", [1, 2]), fs, layout, schema)  # a retried task's copy of rows already staged
    marker = seal_shard(fs, layout, "a.tar", 4, schema, {b"k": b"v"}, "f" * 64)
    assert marker == {"shard": "a.tar", "rows_in": 4, "rows_alive": 3, "signals_sha256": "f" * 64}
    table = read_signals(fs, layout.signals("a.tar"))
    assert table.column(S.SRC_INDEX).to_pylist() == [0, 1, 2, 3]
    assert pq.read_schema(layout.signals("a.tar")).metadata[b"k"] == b"v"
    assert not (tmp_path / "_djray" / "staging" / "a.tar").exists()
    assert Ledger(fs, layout.sealed_dir("f" * 64)).listing() == {"a.tar"}
    # a column the file lacks comes back as nulls of the contract's type
    assert read_signals(fs, layout.signals("a.tar"), [S.KEY, S.VIS_EMBEDDING]).schema.field(S.VIS_EMBEDDING).type \
        == pa.list_(pa.float32())


def test_a_shard_with_missing_rows_is_never_sealed(tmp_path):
    fs, layout, schema = pafs.LocalFileSystem(), Layout(str(tmp_path)), S.signals_schema()
    stage_batch(_batch("a.tar", [0, 2], total=3), fs, layout, schema)
    with pytest.raises(SealError, match="2 staged rows, its reader produced 3"):
        seal_shard(fs, layout, "a.tar", 3, schema, {}, "f" * 64)
    assert not (tmp_path / "signals").exists() and Ledger(fs, layout.sealed_dir("f" * 64)).listing() == set()
