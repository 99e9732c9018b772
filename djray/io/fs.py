"""One filesystem layer for local paths and S3 (pyarrow.fs): shard listing, large sequential reads, atomic writes.

Credentials come only from the standard AWS chain (environment, profiles, instance roles): pyarrow's S3 client
resolves them itself. Endpoint and region come from `storage.*` in the config or the standard AWS variables.

Every object read goes through `open_sequential` (few large ranged reads, resumed at the offset reached after a
transient failure); every object write is one whole-object write (one multipart upload on S3, 10 MiB parts: pyarrow's
part size) that readers see completely or not at all. How failures are retried: djray.io.errors.
"""

from __future__ import annotations

import fnmatch
import functools
import glob as globlib
import json
import os
import posixpath
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from djray.io.errors import OBJECT_ATTEMPTS, retry_object
from djray.io.sequential import READ_AHEAD_BYTES, SequentialFile
from djray.models import weights as W  # one S3 builder for data and weights (models import no io)

SHARD_SUFFIXES = {"webdataset": (".tar", ".tar.gz", ".tgz"), "parquet": (".parquet",)}


@dataclass(frozen=True)
class Storage:
    """Picklable storage options: every task rebuilds its filesystem from these (`storage.*` in the config)."""

    endpoint_url: str | None = None
    region: str | None = None
    retries: int = W.DEFAULT_S3_RETRIES  # attempts per S3 request, inside the AWS SDK (djray.io.errors)
    connect_timeout_s: float = W.DEFAULT_CONNECT_TIMEOUT_S
    request_timeout_s: float = W.DEFAULT_REQUEST_TIMEOUT_S

    @classmethod
    def of(cls, cfg: Any) -> Storage:
        """From a `storage:` config section (djray.config.StorageConfig)."""
        return cls(cfg.endpoint_url, cfg.region, cfg.retries, cfg.timeouts.connect_s, cfg.timeouts.request_s)

    def s3(self) -> pafs.S3FileSystem:
        return _s3(self)


@functools.lru_cache(maxsize=8)
def _s3(storage: Storage) -> pafs.S3FileSystem:
    """One S3 client per process and set of options (S3FileSystem is thread-safe; building one resolves
    credentials, which on EC2 is a metadata-service round trip)."""
    return W.s3_filesystem(storage.endpoint_url, storage.region, retries=storage.retries,
                           connect_timeout_s=storage.connect_timeout_s, request_timeout_s=storage.request_timeout_s)


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def resolve(uri: str, storage: Storage) -> tuple[pafs.FileSystem, str]:
    """Return (filesystem, path inside it) for a local path or an s3:// URI."""
    if is_s3(uri):
        return storage.s3(), uri[len("s3://") :].rstrip("/")
    if "://" in uri and not uri.startswith("file://"):
        raise ValueError(f"unsupported URI scheme in {uri!r} (use a local path or s3://)")
    local = uri[len("file://") :] if uri.startswith("file://") else uri
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(local))


def join(base: str, *parts: str) -> str:
    return posixpath.join(base, *parts)


def _has_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def list_shards(uri: str, fmt: str, storage: Storage) -> tuple[str, list[str]]:
    """List input shards. Returns (root path inside the filesystem, sorted shard paths relative to root).

    `uri` may be a directory (searched recursively), a single file, or a glob (local or s3).
    """
    root, listing = list_shard_sizes(uri, fmt, storage)
    return root, [name for name, _ in listing]


def list_shard_sizes(uri: str, fmt: str, storage: Storage) -> tuple[str, list[tuple[str, int]]]:
    """`list_shards` with each shard's size in bytes (one listing; sizes come with it on S3)."""
    fs, path = resolve(uri, storage)
    suffixes = SHARD_SUFFIXES[fmt]
    if _has_glob(path):
        head = path.split("/")
        fixed = []
        for part in head:
            if _has_glob(part):
                break
            fixed.append(part)
        root = "/".join(fixed) or "/"
        if isinstance(fs, pafs.LocalFileSystem):
            matches = [(p, os.path.getsize(p)) for p in globlib.glob(path, recursive=True) if os.path.isfile(p)]
        else:
            infos = file_info(fs, pafs.FileSelector(root, recursive=True, allow_not_found=True))
            matches = [(i.path, i.size) for i in infos
                       if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, path)]
        return root, sorted((posixpath.relpath(m.replace(os.sep, "/"), root), size) for m, size in matches)
    info = file_info(fs, path)
    if info.type == pafs.FileType.File:
        return posixpath.dirname(path), [(posixpath.basename(path), info.size)]
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"input path not found: {uri}")
    infos = file_info(fs, pafs.FileSelector(path, recursive=True))
    return path, sorted(
        (posixpath.relpath(i.path, path), i.size)
        for i in infos
        if i.type == pafs.FileType.File and i.path.endswith(suffixes) and not _hidden(posixpath.relpath(i.path, path))
    )


def _hidden(rel: str) -> bool:
    return any(part.startswith((".", "_")) for part in rel.split("/"))


def uri_of(fs: pafs.FileSystem, path: str) -> str:
    """How messages name an object: s3://bucket/key on S3, the path on local disk."""
    return f"s3://{path}" if fs.type_name == "s3" else path


def open_sequential(fs: pafs.FileSystem, path: str, *, read_ahead: int = READ_AHEAD_BYTES,
                    attempts: int = OBJECT_ATTEMPTS) -> SequentialFile:
    """Open an object for reading in few large requests: a seekable, read-only file object.

    It reads `read_ahead` bytes per ranged request (the whole object when it is smaller) and, while a sequential
    reader consumes one window, fetches the next in the background. A read that fails transiently after the SDK's
    own retries, or comes back short, is read again from the first byte not yet received, up to `attempts` times
    (then TransientStorageError naming the object). The caller never sees a short read caused by the network.
    Use it for every object read: tar streams, Parquet files (`pq.ParquetFile(f, pre_buffer=True)`), markers.
    """
    return SequentialFile(fs, path, uri_of(fs, path), read_ahead, attempts)


def read_bytes(fs: pafs.FileSystem, path: str, attempts: int = OBJECT_ATTEMPTS) -> bytes:
    with open_sequential(fs, path, attempts=attempts) as f:
        return f.read()


def read_parquet(fs: pafs.FileSystem, path: str, columns: list[str] | None = None) -> pa.Table:
    """A whole Parquet file (or some of its columns) read through `open_sequential`, column chunks pre-buffered."""
    with open_sequential(fs, path) as f:
        return pq.read_table(f, columns=columns, pre_buffer=True)


def write_bytes_atomic(fs: pafs.FileSystem, path: str, data: bytes,
                       attempts: int = OBJECT_ATTEMPTS) -> None:
    """Write a whole object so that readers see the old content or the new one, never a partial file.

    On S3 the object appears when its multipart upload completes (one upload per file, parts of pyarrow's 10 MiB
    part size, each retried by the SDK); a write that still fails transiently is redone whole. Locally we write a
    temporary sibling and rename it over the target.
    """
    fs.create_dir(posixpath.dirname(path), recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        os.replace(tmp, path)
        return

    def put() -> None:
        with fs.open_output_stream(path) as f:
            f.write(data)

    retry_object(put, f"write {uri_of(fs, path)}", attempts)


def write_table_atomic(fs: pafs.FileSystem, path: str, table: pa.Table, compression: str = "zstd",
                       uncompressed: tuple[str, ...] = ()) -> None:
    """Write a Parquet file atomically. Columns in `uncompressed` (encoded image bytes: JPEG/PNG/WebP are compressed
    already, so a general-purpose codec burns CPU for a few percent) are stored without compression."""
    codec = "none" if compression == "none" else compression
    per_column = {name: ("none" if name in uncompressed else codec) for name in table.column_names}
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression=per_column, row_group_size=1024)
    write_bytes_atomic(fs, path, sink.getvalue().to_pybytes())


def write_json(fs: pafs.FileSystem, path: str, obj: Any) -> None:
    write_bytes_atomic(fs, path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(fs: pafs.FileSystem, path: str) -> Any | None:
    """A JSON object (markers, job record, manifest), or None when there is none: missing, or not one whole JSON
    object (a half-written or truncated file never counts as a finished step). Storage failures propagate."""
    try:
        raw = read_bytes(fs, path)
    except FileNotFoundError:
        return None
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def file_info(fs: pafs.FileSystem, what: str | pafs.FileSelector, attempts: int = OBJECT_ATTEMPTS) -> Any:
    """`fs.get_file_info` (one path, or a listing) retried like an object read when it fails transiently."""
    where = what.base_dir if isinstance(what, pafs.FileSelector) else what
    return retry_object(lambda: fs.get_file_info(what), f"list {uri_of(fs, where)}", attempts)


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return file_info(fs, path).type != pafs.FileType.NotFound


def list_files(fs: pafs.FileSystem, path: str, suffix: str = "") -> list[str]:
    infos = file_info(fs, pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix))


def delete_dir(fs: pafs.FileSystem, path: str, attempts: int = OBJECT_ATTEMPTS) -> None:
    """Delete a directory and everything under it, if it exists. A delete that fails transiently (after the SDK's
    own retries) is redone from a fresh look at what is left, up to `attempts` times."""
    _delete_if_there(fs, path, fs.delete_dir, attempts)


def delete_file(fs: pafs.FileSystem, path: str, attempts: int = OBJECT_ATTEMPTS) -> None:
    """Delete one file if it exists, retried like `delete_dir`."""
    _delete_if_there(fs, path, fs.delete_file, attempts)


def _delete_if_there(fs: pafs.FileSystem, path: str, remove: Any, attempts: int) -> None:
    def delete() -> None:
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            remove(path)

    retry_object(delete, f"delete {uri_of(fs, path)}", attempts)
