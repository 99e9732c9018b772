"""Parquet shard reader: one file per shard with key / image bytes / caption columns (names configurable).

Rows stream in blocks of `rows_per_block` through `ParquetFile.iter_batches`, reading only the configured columns.
The file is read through `open_sequential` with pre-buffered column-chunk reads (`pre_buffer=True`: the chunks of a
row group are coalesced into few large ranged reads), so a shard costs a footer read plus about one request per
8 MiB, and a transient failure resumes at the offset reached instead of failing the shard. A shard missing a configured column rejects every row (`bad_shard_schema`); a shard whose footer cannot be read is one
`corrupt_shard` row; a row group that fails mid-file rejects each remaining row by position (`corrupt_shard`).
An empty `caption_col` reads no caption (null captions: reference images, djray.runtime.reference).
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from djray import schema as S
from djray.io.errors import is_storage_error
from djray.io.fs import open_sequential
from djray.io.rows import BlockBuilder, decode_caption, short


def read_parquet_shard(fs: pafs.FileSystem, path: str, src_shard: str, shard_order: int, *,
                       key_col: str = "key", image_col: str = "jpg", caption_col: str = "txt",
                       rows_per_block: int = 256) -> Iterator[pa.Table]:
    out = BlockBuilder(src_shard, shard_order, rows_per_block)
    with open_sequential(fs, path) as f:
        try:
            pf = pq.ParquetFile(f, pre_buffer=True)
        except (pa.ArrowException, OSError) as e:
            if is_storage_error(e):
                raise
            yield from out.add(key=None, reject=(S.Reason.CORRUPT_SHARD, f"not a readable Parquet file: {short(str(e))}"))
            yield from out.finish()
            return
        total = pf.metadata.num_rows
        names = set(pf.schema_arrow.names)
        wanted = [c for c in (key_col, image_col, caption_col) if c]  # no caption column: captions are null
        missing = [c for c in wanted if c not in names]
        if missing:
            detail = f"missing column(s) {missing}; shard has {sorted(names)[:20]}"
            for _ in range(total):
                yield from out.add(key=None, reject=(S.Reason.BAD_SHARD_SCHEMA, short(detail)))
            yield from out.finish()
            return
        try:
            for batch in pf.iter_batches(batch_size=rows_per_block, columns=wanted):
                keys = batch.column(key_col).to_pylist()
                images = batch.column(image_col).to_pylist()
                captions = batch.column(caption_col).to_pylist() if caption_col else [None] * batch.num_rows
                for key, image, caption in zip(keys, images, captions):
                    yield from _add_row(out, key, image, caption)
        except (pa.ArrowException, OSError) as e:
            if is_storage_error(e):
                raise
            detail = f"unreadable from row {out.next_index}: {short(str(e))}"
            while out.next_index < total:
                yield from out.add(key=None, reject=(S.Reason.CORRUPT_SHARD, detail))
    yield from out.finish()


def _add_row(out: BlockBuilder, key, image, caption) -> Iterator[pa.Table]:
    if isinstance(key, (bytes, bytearray)):  # a binary key column: bytes that are not UTF-8 become invalid_key
        key = bytes(key).decode("utf-8", errors="surrogateescape")
    key = None if key is None else str(key)
    if isinstance(caption, (bytes, bytearray)):
        caption, invalid = decode_caption(bytes(caption))
    else:
        invalid = False
    if isinstance(image, str):  # a string column: not image bytes
        yield from out.add(key=key, caption=caption, caption_invalid=invalid,
                           reject=(S.Reason.MISSING_IMAGE, "image column holds text, not bytes"))
    elif not key:
        yield from out.add(key=None, image=image, caption=caption, caption_invalid=invalid,
                           reject=(S.Reason.MISSING_KEY, "null or empty key"))
    elif image is None:
        yield from out.add(key=key, caption=caption, caption_invalid=invalid,
                           reject=(S.Reason.MISSING_IMAGE, "null image cell"))
    else:
        yield from out.add(key=key, image=image, caption=caption, caption_invalid=invalid)
