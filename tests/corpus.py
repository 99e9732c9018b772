"""Helpers that build input corpora for tests: tar shards with full control over members, images, parquet shards."""

from __future__ import annotations

import io
import struct
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def enc(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def noise(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def bomb_png(w: int, h: int) -> bytes:
    """A valid 1-bit all-black PNG of w×h pixels (its header says so); the zeros compress about 1000:1 on disk."""
    comp = zlib.compressobj(9)
    row = bytes(1 + (w + 7) // 8)  # filter byte + packed bits
    idat = b"".join(comp.compress(row) for _ in range(h)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def image_bytes(size=(96, 80), fmt="JPEG", color=(200, 30, 40), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color if mode == "RGB" else None).save(buf, fmt)
    return buf.getvalue()


def write_tar(path: str | Path, members: list[tuple[str, bytes]], *, link: tuple[str, str] | None = None) -> Path:
    """Write a tar with exactly these (name, bytes) members in order (names are not sanitised)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link[0])
            info.type = tarfile.SYMTYPE
            info.linkname = link[1]
            tf.addfile(info)
    return path


def sample_members(key: str, caption: str | bytes | None = "a red square", *, ext="jpg", image: bytes | None = None,
                   json_text: str | None = None) -> list[tuple[str, bytes]]:
    members = [(f"{key}.{ext}", image if image is not None else image_bytes())]
    if caption is not None:
        members.append((f"{key}.txt", caption if isinstance(caption, bytes) else caption.encode()))
    if json_text is not None:
        members.append((f"{key}.json", json_text.encode()))
    return members


def write_bad_rows_shard(path: str | Path, good_caption: str = "a red rectangle") -> Path:
    """One shard with a good row (x0good) and three rows the decode / caption stages reject: x1corrupt
    (corrupt_image), x2nocap (empty_caption), x3tiny (image_too_small)."""
    return write_tar(path, sample_members("x0good", good_caption, image=image_bytes((300, 200), color=(10, 120, 200)))
                     + sample_members("x1corrupt", "a broken file", image=b"definitely not an image")
                     + sample_members("x2nocap", "   ", image=image_bytes((120, 90)))
                     + sample_members("x3tiny", "a tiny image", image=image_bytes((16, 16))))


def write_parquet_shard(path: str | Path, rows: list[dict], schema: pa.Schema | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = schema or pa.schema([("key", pa.string()), ("jpg", pa.binary()), ("txt", pa.string())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=4)
    return path


def write_config(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.write_text(text)
    return path
