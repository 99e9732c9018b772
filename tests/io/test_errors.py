"""Which storage failures are transient, which are storage errors at all, and the whole-object retry loop.

The messages are the ones pyarrow's S3 filesystem raises (captured against the fault proxy of tests/s3_faults.py);
the S3 tests in tests/io/test_sequential.py and tests/test_pipeline_s3.py exercise them end to end."""

from __future__ import annotations

import pytest

from djray.io.errors import (OBJECT_ATTEMPTS, TransientStorageError, is_storage_error, is_transient, retry_object,
                             task_args)

TRANSIENT = [
    "AWS Error SLOW_DOWN during GetObject operation: Please reduce your request rate. (Request ID: x)",
    "AWS Error SERVICE_UNAVAILABLE during GetObject operation: ",
    "When initiating multiple part upload for key 'out/m.json' in bucket 'b': AWS Error SLOW_DOWN during "
    "CreateMultipartUpload operation: Please reduce your request rate.",
    "AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 18, Transferred a partial file",
    "When reading information for key 'x.bin' in bucket 'b': AWS Error NETWORK_CONNECTION during HeadObject "
    "operation: curlCode: 7, Could not connect to server",
    "AWS Error UNKNOWN (HTTP status 503) during GetObject operation: ",
    "AWS Error INTERNAL_FAILURE during UploadPart operation: We encountered an internal error.",
]
PERMANENT = [
    "When reading information for key 'x' in bucket 'b': AWS Error ACCESS_DENIED during HeadObject operation: "
    "No response body.",
    "When listing objects under key 'in' in bucket 'b': AWS Error NO_SUCH_BUCKET during ListObjectsV2 operation: "
    "The specified bucket does not exist",
    "Parquet magic bytes not found in footer. Either the file is corrupted or this is not a parquet file.",
]


@pytest.mark.parametrize("message", TRANSIENT)
def test_transient(message):
    assert is_transient(OSError(message)) and is_storage_error(OSError(message))


@pytest.mark.parametrize("message", PERMANENT)
def test_not_transient(message):
    assert not is_transient(OSError(message))


def test_storage_error_versus_damaged_bytes():
    assert is_storage_error(OSError(PERMANENT[0])) and is_storage_error(FileNotFoundError("x"))
    assert is_storage_error(TransientStorageError("s3://b/k: read ... failed"))
    assert not is_storage_error(OSError(PERMANENT[2]))  # a corrupt Parquet file: a reject, not a failure
    assert not is_transient(FileNotFoundError("AWS Error NETWORK_CONNECTION"))  # the type decides first
    assert is_transient(ConnectionResetError()) and not is_transient(ValueError("timed out"))


def test_retry_object_redoes_transient_failures_then_names_what_failed():
    calls, slept = [], []

    def flaky():
        calls.append(1)
        if len(calls) < OBJECT_ATTEMPTS:
            raise OSError(TRANSIENT[0])
        return "ok"

    assert retry_object(flaky, "write s3://b/k", OBJECT_ATTEMPTS, sleep=slept.append) == "ok"
    assert len(calls) == OBJECT_ATTEMPTS and len(slept) == OBJECT_ATTEMPTS - 1

    def down():
        raise OSError(TRANSIENT[1])

    with pytest.raises(TransientStorageError, match=r"^write s3://b/k failed after 3 attempt\(s\): AWS Error SERV"):
        retry_object(down, "write s3://b/k", 3, sleep=lambda s: None)


def test_retry_object_does_not_retry_permanent_failures():
    calls = []

    def denied():
        calls.append(1)
        raise OSError(PERMANENT[0])

    with pytest.raises(OSError, match="ACCESS_DENIED"):
        retry_object(denied, "write s3://b/k", 5, sleep=lambda s: None)
    assert len(calls) == 1


def test_task_args_retry_transient_storage_failures_a_bounded_number_of_times():
    assert task_args(4) == {"max_retries": 4, "retry_exceptions": [TransientStorageError]}
