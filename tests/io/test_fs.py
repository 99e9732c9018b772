"""Listings and deletes (djray.io.fs.file_info / delete_dir / delete_file) against a real S3-protocol server behind the
fault-injecting proxy: a throttled listing or delete that outlasts the SDK's own retries is redone, never fails the
job, and one that outlasts every retry names the object. Local paths go through the same code."""

from __future__ import annotations

import pyarrow.fs as pafs
import pytest
from s3_faults import FaultPlan, Rule

from djray.io import fs as iofs
from djray.io.errors import OBJECT_ATTEMPTS, TransientStorageError


def _objects(s3_faults, prefix: str) -> list[str]:
    listed = s3_faults.client.list_objects_v2(Bucket=s3_faults.bucket, Prefix=prefix)
    return sorted(o["Key"] for o in listed.get("Contents", []) if not o["Key"].endswith("/"))  # not dir markers


def _fill(s3_faults, prefix: str, n: int) -> None:
    for i in range(n):
        s3_faults.client.put_object(Bucket=s3_faults.bucket, Key=f"{prefix}/f{i}.bin", Body=b"x" * (i + 1))


def test_a_throttled_delete_is_redone_until_the_directory_is_gone(s3_faults):
    """With the SDK's retries off, the batch delete of the contents is throttled once, then the delete of the
    directory's marker: each time the delete is redone from a fresh look at what is left, and ends with nothing under
    the directory."""
    _fill(s3_faults, "out/staging/a", 4)
    _fill(s3_faults, "out/keep", 1)
    s3_faults.proxy.reset(FaultPlan(rules=[Rule("slowdown", method="POST"), Rule("slowdown", method="DELETE")]))
    iofs.delete_dir(s3_faults.fs(retries=1), f"{s3_faults.bucket}/out/staging/a")
    assert _objects(s3_faults, "out/staging/a") == []
    assert _objects(s3_faults, "out/keep") == ["out/keep/f0.bin"]
    assert s3_faults.proxy.faults()["slowdown"] == 2  # both faults did happen


def test_a_throttled_file_delete_and_listing_are_redone(s3_faults):
    _fill(s3_faults, "out/m", 2)
    s3_faults.proxy.reset(FaultPlan(rules=[Rule("slowdown", method="GET", count=OBJECT_ATTEMPTS - 1)]))
    infos = iofs.file_info(s3_faults.fs(retries=1), pafs.FileSelector(f"{s3_faults.bucket}/out/m"))
    assert sorted(i.base_name for i in infos) == ["f0.bin", "f1.bin"]
    s3_faults.proxy.reset(FaultPlan(rules=[Rule("slowdown", method="DELETE", count=OBJECT_ATTEMPTS - 1)]))
    iofs.delete_file(s3_faults.fs(retries=1), f"{s3_faults.bucket}/out/m/f0.bin")
    assert _objects(s3_faults, "out/m") == ["out/m/f1.bin"]
    assert s3_faults.proxy.faults()["slowdown"] == OBJECT_ATTEMPTS - 1


def test_a_delete_that_outlasts_every_retry_names_the_object(s3_faults):
    _fill(s3_faults, "out/d", 1)
    s3_faults.proxy.reset(FaultPlan(rules=[Rule("slowdown", method="DELETE", count=10**6),
                                           Rule("slowdown", method="POST", count=10**6)]))
    where = f"{s3_faults.bucket}/out/d"
    with pytest.raises(TransientStorageError, match=rf"^delete s3://{where}\S* failed after {OBJECT_ATTEMPTS} attempt"):
        iofs.delete_dir(s3_faults.fs(retries=1), where)
    s3_faults.proxy.reset()
    assert _objects(s3_faults, "out/d") == ["out/d/f0.bin"]  # nothing was lost to the failure either


def test_deleting_what_is_not_there_is_no_error(s3_faults, tmp_path):
    iofs.delete_dir(s3_faults.fs(), f"{s3_faults.bucket}/nothing/here")
    iofs.delete_file(s3_faults.fs(), f"{s3_faults.bucket}/nothing/here.json")
    local = pafs.LocalFileSystem()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("1")
    (tmp_path / "f").write_text("2")
    iofs.delete_dir(local, str(tmp_path / "d"))
    iofs.delete_file(local, str(tmp_path / "f"))
    iofs.delete_dir(local, str(tmp_path / "d"))
    iofs.delete_file(local, str(tmp_path / "f"))
    assert list(tmp_path.iterdir()) == []
