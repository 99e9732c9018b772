"""One input shard as a stream of source-schema blocks, whatever its format and storage.

Phase A reads every shard once through this; phase C reads it again (sequentially, once) for the columns the signals
store does not keep: the original image bytes and the img2dataset `.json`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa

from djray.io import fs as iofs
from djray.io.parquet import read_parquet_shard
from djray.io.webdataset import read_webdataset_shard


@dataclass(frozen=True)
class ReadSpec:
    """Everything a read task needs; picklable."""

    root_uri: str  # local absolute path or s3://bucket/prefix; shard paths are relative to it
    format: str
    storage: iofs.Storage
    rows_per_block: int
    key_col: str = "key"
    image_col: str = "jpg"
    caption_col: str = "txt"
    task_retries: int = 3  # Ray reruns of a read task that failed on storage (djray.io.errors.task_args)


def read_shard(src_shard: str, order: int, spec: ReadSpec) -> Iterator[pa.Table]:
    fs, root = iofs.resolve(spec.root_uri, spec.storage)
    path = iofs.join(root, src_shard)
    if spec.format == "webdataset":
        yield from read_webdataset_shard(fs, path, src_shard, order, spec.rows_per_block)
    else:
        yield from read_parquet_shard(fs, path, src_shard, order, key_col=spec.key_col, image_col=spec.image_col,
                                      caption_col=spec.caption_col, rows_per_block=spec.rows_per_block)
