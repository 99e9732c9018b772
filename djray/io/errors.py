"""Storage errors: which failures are transient (retry them) and which exceptions come from storage, not from the bytes.

A transient failure (S3 `503 SlowDown`, `500`, a request timeout, a connection reset or a body cut short) is retried
in three layers, and never becomes data:

1. **request** — every S3 request is retried inside the AWS SDK that pyarrow uses: `storage.retries` attempts,
   exponential backoff (the SDK's default retry strategy, no retry budget; `djray.models.weights.s3_filesystem`);
2. **object** — a ranged read that still fails, or whose body comes back short, is read again from the first byte not
   yet received (`djray.io.fs.open_sequential`), and a whole-object write, a listing or a delete is redone
   (`write_bytes_atomic`, `file_info`, `delete_dir`), up to `OBJECT_ATTEMPTS` times with backoff; then
   `TransientStorageError`, naming the object;
3. **task** — `TransientStorageError` is in the `retry_exceptions` of every Ray task that reads or writes objects, so
   Ray reruns the task (`ray.task_retries` times). Only then does the job fail, with one line naming the object.

Readers tell storage failures from damaged bytes with `is_storage_error`: pyarrow reports both as OSError, and only
damaged bytes may become `corrupt_shard` rejects.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

OBJECT_ATTEMPTS = 3  # layer 2, on top of the SDK's own attempts per request: few, since each one is already retried
# What the AWS SDK (through pyarrow) and the OS say for failures that may pass. Ray Data's own list
# (ray.data.context.DEFAULT_RETRIED_IO_ERRORS) is a subset of these.
TRANSIENT_MARKERS = (
    "SLOW_DOWN", "SlowDown", "SERVICE_UNAVAILABLE", "THROTTLING", "Throttling", "TooManyRequests",
    "INTERNAL_FAILURE", "InternalError", "REQUEST_TIMEOUT", "RequestTimeout", "NETWORK_CONNECTION",
    "HTTP status 500", "HTTP status 502", "HTTP status 503", "HTTP status 504", "curlCode",
    "Connection reset", "Connection refused", "Broken pipe", "timed out", "Timeout",
)
# Answers that no retry changes: a missing object or bucket, refused credentials.
PERMANENT_MARKERS = ("ACCESS_DENIED", "AccessDenied", "NO_SUCH", "NoSuchKey", "NoSuchBucket", "InvalidAccessKeyId",
                     "SignatureDoesNotMatch", "InvalidRange")


class TransientStorageError(OSError):
    """A storage request failed for a reason that may pass, after every retry of the request and the object.

    Ray tasks retry on it (`retry_exceptions`); the message names the object and the cause on one line."""


def task_args(task_retries: int) -> dict:
    """Layer 3: the Ray remote arguments of every task that reads or writes objects. Ray reruns the task after a
    TransientStorageError or a dead worker, `task_retries` times (Ray's own default for Ray Data tasks is unlimited
    reruns of dead workers and none on exceptions: a store that stays down would then fail nothing, or everything)."""
    return {"max_retries": task_retries, "retry_exceptions": [TransientStorageError]}


def is_transient(e: BaseException) -> bool:
    """True for failures that may pass when retried (throttling, 5xx, timeouts, resets, short bodies)."""
    if isinstance(e, TransientStorageError):
        return True
    if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(e, (ConnectionError, TimeoutError)):
        return True
    if not isinstance(e, OSError):
        return False
    text = str(e)
    return not any(m in text for m in PERMANENT_MARKERS) and any(m in text for m in TRANSIENT_MARKERS)


def is_storage_error(e: BaseException) -> bool:
    """pyarrow reports both corrupt bytes and storage failures as OSError; only the latter must fail the shard."""
    return (isinstance(e, (TransientStorageError, FileNotFoundError, PermissionError, ConnectionError, TimeoutError))
            or "AWS Error" in str(e) or is_transient(e))


def backoff_s(failures: int, base: float = 0.5, cap: float = 8.0) -> float:
    """Exponential backoff with full jitter before the next attempt, after `failures` failed ones (1, 2, ...)."""
    return random.uniform(0, min(cap, base * 2 ** (failures - 1)))


def one_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def retry_object(fn: Callable[[], T], what: str, attempts: int, sleep: Callable[[float], None] = time.sleep) -> T:
    """Run a whole-object operation (`what`: e.g. "write s3://b/k") up to `attempts` times while it fails transiently;
    then raise TransientStorageError naming it. Other errors propagate at once. `fn` must be idempotent."""
    failures = 0
    while True:
        try:
            return fn()
        except OSError as e:
            if not is_transient(e):
                raise
            failures += 1
            if failures >= attempts:
                raise TransientStorageError(f"{what} failed after {failures} attempt(s): {one_line(e)}") from e
            sleep(backoff_s(failures))
