"""read_parquet_shard in-process (no Ray): configurable columns, read-stage rejects, damaged files, the end marker."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

import corpus
from djray import schema as S
from djray.io.parquet import read_parquet_shard

FS = pafs.LocalFileSystem()
SHARD = "p/shard-3.parquet"
ORDER = 3
CUSTOM = dict(key_col="sample_id", image_col="image_bytes", caption_col="alt_text")


def read(path: str | Path, rows_per_block: int = 256, **cols) -> tuple[list[pa.Table], list[dict]]:
    tables = list(read_parquet_shard(FS, str(path), SHARD, ORDER, rows_per_block=rows_per_block, **cols))
    assert tables
    for t in tables:
        assert t.schema == S.SOURCE_SCHEMA
        assert 0 < t.num_rows <= rows_per_block
    rows = pa.concat_tables(tables).to_pylist()
    marker, real = rows[-1], rows[:-1]
    assert (marker[S.SRC_INDEX], marker[S.REJECT_REASON], marker[S.SHARD_ROWS]) == (-1, S.END_OF_SHARD, len(real))
    assert [r[S.SRC_INDEX] for r in real] == list(range(len(real)))
    for r in real:
        assert (r[S.SRC_SHARD], r[S.SHARD_ORDER], r[S.SHARD_ROWS]) == (SHARD, ORDER, None)
        assert (r[S.REJECT_STAGE] is None) == (r[S.REJECT_REASON] is None)
        if r[S.REJECT_REASON] is not None:
            assert r[S.REJECT_STAGE] == S.Stage.READ and r[S.REJECT_DETAIL]
    return tables, real


def summary(rows: list[dict]) -> list[tuple]:
    return [(r[S.KEY], r[S.REJECT_REASON]) for r in rows]


CUSTOM_SCHEMA = pa.schema([("sample_id", pa.string()), ("image_bytes", pa.binary()), ("alt_text", pa.string()),
                           ("extra", pa.int32())])


def test_custom_column_names(tmp_path):
    rows = [{"sample_id": f"s{i}", "image_bytes": bytes([i]) * 10, "alt_text": f"alt {i}", "extra": i}
            for i in range(9)]
    path = corpus.write_parquet_shard(tmp_path / "s.parquet", rows, CUSTOM_SCHEMA)
    tables, out = read(path, rows_per_block=4, **CUSTOM)
    assert [t.num_rows for t in tables] == [4, 4, 2]  # bounded blocks, marker in the last
    assert summary(out) == [(f"s{i}", None) for i in range(9)]
    assert [(r[S.IMAGE], r[S.CAPTION_RAW]) for r in out] == [(bytes([i]) * 10, f"alt {i}") for i in range(9)]
    assert all(r[S.CAPTION_INVALID_UTF8] is False and r[S.SRC_JSON] is None for r in out)



def test_no_caption_column_reads_null_captions(tmp_path):
    """Reference images (vas target.images) carry no caption: an empty caption_col reads none, even if present."""
    schema = pa.schema([("sample_id", pa.string()), ("image_bytes", pa.binary())])
    rows = [{"sample_id": f"r{i}", "image_bytes": bytes([i]) * 5} for i in range(3)]
    path = corpus.write_parquet_shard(tmp_path / "r.parquet", rows, schema)
    _, out = read(path, key_col="sample_id", image_col="image_bytes", caption_col="")
    assert summary(out) == [(f"r{i}", None) for i in range(3)]
    assert [(r[S.IMAGE], r[S.CAPTION_RAW]) for r in out] == [(bytes([i]) * 5, None) for i in range(3)]
    _, out = read(path, key_col="sample_id", image_col="image_bytes", caption_col="alt_text")
    assert {r[S.REJECT_REASON] for r in out} == {S.Reason.BAD_SHARD_SCHEMA}  # a configured caption column is needed

def test_null_key_null_image_and_empty_key(tmp_path):
    rows = [
        {"sample_id": "a", "image_bytes": b"IMG-A", "alt_text": "ok", "extra": 0},
        {"sample_id": None, "image_bytes": b"IMG-B", "alt_text": "no key", "extra": 1},
        {"sample_id": "c", "image_bytes": None, "alt_text": "no image", "extra": 2},
        {"sample_id": "", "image_bytes": b"IMG-D", "alt_text": "empty key", "extra": 3},
        {"sample_id": "e", "image_bytes": b"IMG-E", "alt_text": None, "extra": 4},  # caption policy decides later
    ]
    path = corpus.write_parquet_shard(tmp_path / "s.parquet", rows, CUSTOM_SCHEMA)
    _, out = read(path, **CUSTOM)
    assert summary(out) == [("a", None), (None, S.Reason.MISSING_KEY), ("c", S.Reason.MISSING_IMAGE),
                            (None, S.Reason.MISSING_KEY), ("e", None)]
    # reject rows keep the source columns they had
    assert (out[1][S.IMAGE], out[1][S.CAPTION_RAW]) == (b"IMG-B", "no key")
    assert (out[2][S.IMAGE], out[2][S.CAPTION_RAW]) == (None, "no image")
    assert out[4][S.CAPTION_RAW] is None


def test_missing_configured_column_rejects_every_row(tmp_path):
    rows = [{"key": f"k{i}", "jpg": b"x", "txt": "t"} for i in range(11)]
    path = corpus.write_parquet_shard(tmp_path / "s.parquet", rows)  # row groups of 4
    assert pq.ParquetFile(path).metadata.num_rows == 11
    _, out = read(path, rows_per_block=4, key_col="key", image_col="jpg", caption_col="caption")
    assert summary(out) == [(None, S.Reason.BAD_SHARD_SCHEMA)] * 11
    assert "caption" in out[0][S.REJECT_DETAIL]


def test_missing_column_on_an_empty_shard_gives_only_the_marker(tmp_path):
    path = corpus.write_parquet_shard(tmp_path / "s.parquet", [])
    _, out = read(path, caption_col="caption")
    assert out == []


def test_empty_shard(tmp_path):
    _, out = read(corpus.write_parquet_shard(tmp_path / "s.parquet", []))
    assert out == []


@pytest.mark.parametrize("content", [os.urandom(2048), b"PAR1 but not really", b""],
                         ids=["random", "magic-prefix", "zero-bytes"])
def test_not_a_parquet_file_is_one_corrupt_shard_row(tmp_path, content):
    path = tmp_path / "garbage.parquet"
    path.write_bytes(content)
    _, out = read(path)
    assert summary(out) == [(None, S.Reason.CORRUPT_SHARD)]


def test_int_key_cast_to_string(tmp_path):
    schema = pa.schema([("key", pa.int64()), ("jpg", pa.binary()), ("txt", pa.string())])
    rows = [{"key": k, "jpg": b"x", "txt": "t"} for k in (0, 7, -3, 12345678901234)]
    _, out = read(corpus.write_parquet_shard(tmp_path / "s.parquet", rows, schema))
    # 0 is a valid key, not an empty one
    assert summary(out) == [("0", None), ("7", None), ("-3", None), ("12345678901234", None)]


def test_binary_key_column_decoded_and_non_utf8_key_rejected(tmp_path):
    schema = pa.schema([("key", pa.binary()), ("jpg", pa.binary()), ("txt", pa.string())])
    rows = [{"key": "k\u00e9".encode(), "jpg": b"x", "txt": "t"}, {"key": b"caf\xe9", "jpg": b"y", "txt": "u"}]
    _, out = read(corpus.write_parquet_shard(tmp_path / "s.parquet", rows, schema))
    assert summary(out) == [("k\u00e9", None), (None, S.Reason.INVALID_KEY)]
    assert "caf\\udce9" in out[1][S.REJECT_DETAIL]
    assert (out[1][S.IMAGE], out[1][S.CAPTION_RAW]) == (b"y", "u")


def test_binary_caption_column_with_invalid_utf8_flagged(tmp_path):
    schema = pa.schema([("key", pa.string()), ("jpg", pa.binary()), ("txt", pa.binary())])
    rows = [{"key": "bad", "jpg": b"x", "txt": b"caf\xe9 \xff"},
            {"key": "good", "jpg": b"x", "txt": "naïve 漢字".encode()},
            {"key": "none", "jpg": b"x", "txt": None}]
    _, out = read(corpus.write_parquet_shard(tmp_path / "s.parquet", rows, schema))
    assert summary(out) == [("bad", None), ("good", None), ("none", None)]
    assert [(r[S.CAPTION_RAW], r[S.CAPTION_INVALID_UTF8]) for r in out] == [
        ("caf\ufffd \ufffd", True), ("naïve 漢字", False), (None, False)]


def test_large_types_accepted(tmp_path):
    schema = pa.schema([("key", pa.large_string()), ("jpg", pa.large_binary()), ("txt", pa.large_string())])
    rows = [{"key": "k", "jpg": b"\x00\x01", "txt": "t"}]
    _, out = read(corpus.write_parquet_shard(tmp_path / "s.parquet", rows, schema))
    assert summary(out) == [("k", None)]
    assert out[0][S.IMAGE] == b"\x00\x01"


def test_string_image_column_is_not_image_bytes(tmp_path):
    schema = pa.schema([("key", pa.string()), ("jpg", pa.string()), ("txt", pa.string())])
    rows = [{"key": "k", "jpg": "https://example.com/a.jpg", "txt": "t"}]
    _, out = read(corpus.write_parquet_shard(tmp_path / "s.parquet", rows, schema))
    assert summary(out) == [("k", S.Reason.MISSING_IMAGE)]
    assert out[0][S.IMAGE] is None


def test_corrupt_row_group_rejects_the_rest_by_position(tmp_path):
    rows = [{"key": f"k{i}", "jpg": os.urandom(2000), "txt": f"cap {i}"} for i in range(12)]
    path = corpus.write_parquet_shard(tmp_path / "s.parquet", rows)  # 3 row groups of 4
    col = pq.ParquetFile(path).metadata.row_group(1).column(1)
    data = bytearray(path.read_bytes())
    for i in range(col.data_page_offset, col.data_page_offset + 32):  # smash the 2nd row group's page header
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    _, out = read(path, rows_per_block=4)
    assert summary(out[:4]) == [(f"k{i}", None) for i in range(4)]
    assert [r[S.IMAGE] for r in out[:4]] == [r["jpg"] for r in rows[:4]]
    assert summary(out[4:]) == [(None, S.Reason.CORRUPT_SHARD)] * 8


def test_missing_file_is_a_storage_error_not_a_reject(tmp_path):
    with pytest.raises(FileNotFoundError):
        list(read_parquet_shard(FS, str(tmp_path / "nope.parquet"), SHARD, ORDER))
