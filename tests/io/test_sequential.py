"""open_sequential and the whole-object writes against a real S3-protocol server behind the fault-injecting proxy
(tests/s3_faults.py): request counts and ranges as the server sees them, resumption after a body cut short,
failures that outlast every retry, and local files through the same code."""

from __future__ import annotations

import io
import json
import math
import os
import tarfile

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from s3_faults import FaultPlan, Rule, parts_of

from djray.io import fs as iofs
from djray.io.errors import OBJECT_ATTEMPTS, TransientStorageError
from djray.io.sequential import READ_AHEAD_BYTES

MiB = 1 << 20


def put(s3_faults, key: str, data: bytes) -> str:
    s3_faults.client.put_object(Bucket=s3_faults.bucket, Key=key, Body=data)
    return f"{s3_faults.bucket}/{key}"


def ranges(s3_faults, key: str) -> list[tuple[int, int]]:
    """(first, last) byte of every GET of `key`, in arrival order."""
    out = []
    for r in s3_faults.proxy.requests("GET", key):
        first, last = r.range.removeprefix("bytes=").split("-")
        out.append((int(first), int(last)))
    return out


def read_in_small_pieces(f, piece: int = 10240) -> bytes:
    chunks = []
    while chunk := f.read(piece):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("size", [3 * MiB, 20 * MiB + 123])
def test_small_reads_become_few_large_requests(s3_faults, size):
    data = os.urandom(size)
    key = put(s3_faults, "obj.bin", data)
    with iofs.open_sequential(s3_faults.fs(), key) as f:
        assert read_in_small_pieces(f) == data  # what tarfile does: 10 KiB at a time
    windows = math.ceil(size / READ_AHEAD_BYTES)
    assert ranges(s3_faults, key) == [(i * READ_AHEAD_BYTES, min(size, (i + 1) * READ_AHEAD_BYTES) - 1)
                                      for i in range(windows)]
    assert len(s3_faults.proxy.requests("HEAD", key)) == 1


def test_parquet_footer_then_columns(s3_faults):
    """A Parquet reader seeks to the footer, then reads column chunks (pre-buffered): a small file is one request,
    a large one a footer read plus about one request per window."""
    small = pa.table({"k": [str(i) for i in range(1000)], "b": [os.urandom(100) for _ in range(1000)]})
    large = pa.table({"k": [str(i) for i in range(40)], "b": [os.urandom(MiB // 2) for _ in range(40)]})
    for name, table in (("small", small), ("large", large)):
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, row_group_size=10, compression="none")
        key = put(s3_faults, f"{name}.parquet", sink.getvalue().to_pybytes())
        with iofs.open_sequential(s3_faults.fs(), key) as f:
            got = pq.ParquetFile(f, pre_buffer=True).read()
        assert got.equals(table)
        size = sink.getvalue().size
        gets = len(s3_faults.proxy.requests("GET", key))
        if name == "small":
            assert gets == 1
        else:
            assert size > 2 * READ_AHEAD_BYTES and gets <= math.ceil(size / READ_AHEAD_BYTES) + 2, gets


def test_a_column_projection_does_not_download_the_columns_it_skips(s3_faults):
    """A reader of a few columns (the selection reads signals columns) downloads only those: the rest stays on the
    store."""
    table = pa.table({"key": [f"k{i}" for i in range(64)], "image": [os.urandom(MiB // 2) for _ in range(64)],
                      "reason": [None] * 64})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="none")
    key = put(s3_faults, "fragment.parquet", sink.getvalue().to_pybytes())
    got = iofs.read_parquet(s3_faults.fs(), key, ["key", "reason"])
    assert got.column("key").to_pylist() == table.column("key").to_pylist()
    fetched = sum(last - first + 1 for first, last in ranges(s3_faults, key))
    assert sink.getvalue().size > 30 * MiB and fetched < MiB, fetched
    assert len(ranges(s3_faults, key)) <= 3  # the footer, then the key and reason column chunks


def test_a_body_cut_short_resumes_at_the_first_byte_not_received(s3_faults):
    """With the SDK's own retries off, the second window's body is cut in the middle: the read resumes with a request
    that starts at the first byte not yet received and the bytes are identical."""
    data = os.urandom(20 * MiB)
    key = put(s3_faults, "cut.bin", data)
    s3_faults.proxy.reset(FaultPlan(rules=[Rule("cut", key=key, nth=2, cut_at=3 * MiB)]))
    with iofs.open_sequential(s3_faults.fs(retries=1), key) as f:
        assert read_in_small_pieces(f) == data
    gets = s3_faults.proxy.requests("GET", key)
    assert [r.fault for r in gets] == [None, "cut", None, None]
    assert ranges(s3_faults, key)[1][0] == ranges(s3_faults, key)[2][0] == READ_AHEAD_BYTES
    assert len(s3_faults.proxy.requests("HEAD", key)) == 2  # reopened after the failure


def test_throttling_and_resets_within_the_sdk_retries_are_invisible(s3_faults):
    data = os.urandom(20 * MiB)
    key = put(s3_faults, "flaky.bin", data)
    s3_faults.proxy.reset(FaultPlan(slowdown_every=3, drop_every=7, cut_every=2, cut_min_bytes=1))
    with iofs.open_sequential(s3_faults.fs(), key) as f:
        assert read_in_small_pieces(f) == data
    assert set(s3_faults.proxy.faults()) == {"slowdown", "drop", "cut"}


def test_a_failure_that_outlasts_every_retry_names_the_object(s3_faults):
    key = put(s3_faults, "down.bin", os.urandom(MiB))
    s3_faults.proxy.reset(FaultPlan(rules=[Rule("slowdown", key=key, count=10**6)]))
    with pytest.raises(TransientStorageError, match=rf"^s3://{key}: read at byte 0 of {MiB} failed after "
                                                    rf"{OBJECT_ATTEMPTS} attempt\(s\): AWS Error (SLOW_DOWN|SERVICE_UNAVAILABLE)"):
        with iofs.open_sequential(s3_faults.fs(retries=2), key) as f:
            f.read()
    assert len(s3_faults.proxy.requests("GET", key)) == OBJECT_ATTEMPTS * 2  # each object attempt: 2 SDK attempts


def test_a_missing_object_is_not_retried(s3_faults):
    with pytest.raises(FileNotFoundError):
        iofs.open_sequential(s3_faults.fs(), f"{s3_faults.bucket}/nope.bin")
    assert len(s3_faults.proxy.requests("HEAD", f"{s3_faults.bucket}/nope.bin")) == 1


def test_local_files_read_the_same(tmp_path):
    data = os.urandom(9 * MiB + 7)
    (tmp_path / "x.bin").write_bytes(data)
    with iofs.open_sequential(pafs.LocalFileSystem(), str(tmp_path / "x.bin")) as f:
        assert read_in_small_pieces(f) == data
        f.seek(-5, io.SEEK_END)
        assert f.read() == data[-5:] and f.tell() == len(data)
        f.seek(100)
        assert f.read(10) == data[100:110]
    assert f.closed


def test_tarfile_streams_through_it(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for i in range(3):
            info = tarfile.TarInfo(f"{i}.bin")
            payload = os.urandom(3 * MiB)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    (tmp_path / "t.tar").write_bytes(buf.getvalue())
    with iofs.open_sequential(pafs.LocalFileSystem(), str(tmp_path / "t.tar"), read_ahead=MiB) as f:
        with tarfile.open(fileobj=f, mode="r|*") as tar:
            names = [m.name for m in tar]
    assert names == ["0.bin", "1.bin", "2.bin"]


# ---- writes --------------------------------------------------------------------------------------------------------


def test_one_multipart_upload_per_file_with_large_parts(s3_faults):
    data = os.urandom(25 * MiB)
    key = f"{s3_faults.bucket}/out/big.bin"
    s3_faults.proxy.reset(FaultPlan(slowdown_every=4))
    iofs.write_bytes_atomic(s3_faults.fs(), key, data)
    created = [r for r in s3_faults.proxy.requests("POST", key, ok=True) if r.query == "uploads"]
    assert len(created) == 1
    parts = parts_of(s3_faults.proxy.requests("PUT", key))
    assert len(parts) == 3 and all(p >= 8 * MiB for p in sorted(parts)[1:])  # every part but the last (smallest)
    assert s3_faults.client.get_object(Bucket=s3_faults.bucket, Key="out/big.bin")["Body"].read() == data


def test_a_write_that_outlasts_the_sdk_retries_is_redone_then_fails_naming_the_object(s3_faults):
    key = f"{s3_faults.bucket}/out/m.json"
    s3_faults.proxy.reset(FaultPlan(rules=[Rule("slowdown", method="POST", key=key, count=OBJECT_ATTEMPTS - 1)]))
    iofs.write_json(s3_faults.fs(retries=1), key, {"a": 1})  # failed uploads, then a whole new write succeeds
    assert iofs.read_json(s3_faults.fs(), key) == {"a": 1}
    s3_faults.proxy.reset(FaultPlan(rules=[Rule("slowdown", method="POST", key=key, count=10**6)]))
    with pytest.raises(TransientStorageError, match=rf"^write s3://{key} failed after {OBJECT_ATTEMPTS} attempt"):
        iofs.write_json(s3_faults.fs(retries=1), key, {"a": 2})
    s3_faults.proxy.reset()
    assert iofs.read_json(s3_faults.fs(), key) == {"a": 1}  # the old content, whole


@pytest.mark.parametrize("content", [b'{"shard": "a", "rows_in": 3, "fragm', b"", b"[1, 2]", b"\xff\xfe"],
                         ids=["truncated", "empty", "not-an-object", "not-utf8"])
def test_a_half_written_marker_is_no_marker(tmp_path, content):
    (tmp_path / "m.json").write_bytes(content)
    assert iofs.read_json(pafs.LocalFileSystem(), str(tmp_path / "m.json")) is None
    assert iofs.read_json(pafs.LocalFileSystem(), str(tmp_path / "missing.json")) is None


def test_local_writes_leave_no_partial_file(tmp_path):
    target = tmp_path / "d" / "m.json"
    iofs.write_json(pafs.LocalFileSystem(), str(target), {"x": list(range(10))})
    assert json.loads(target.read_text()) == {"x": list(range(10))}
    assert [p.name for p in target.parent.iterdir()] == ["m.json"]
