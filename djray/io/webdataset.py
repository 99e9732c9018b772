"""WebDataset (img2dataset) tar shard reader.

Members are grouped into samples the way WebDataset does: consecutive members sharing the path up to the first dot
of the basename (`00000123.jpg`, `00000123.txt`, `00000123.json`). Tolerated: missing `.txt`/`.json`, unknown
members, directories. Plain and gzip-compressed tars (`.tar`, `.tar.gz`, `.tgz`) are read as one stream. Rejected at
the read stage (one row each): member names that are absolute or contain `..`, link/device members, samples without
an image, keys that are not valid UTF-8. A truncated or corrupt tar yields every complete sample before the damage
and one `corrupt_shard` row for what could not be read (keyed by the sample being read when the damage hit, or null
when it hit a member header). Nothing is ever extracted to disk.

The shard is read front to back through `open_sequential` (8 MiB ranged reads, the next one fetched while the
current one is parsed; a transient failure resumes at the offset reached), not through a random-access S3 file, where
each of tarfile's 10 KiB reads would be its own GET. Filesystem errors (network, permissions) are not data problems:
they propagate so the shard fails and is retried or resumed, instead of being recorded as rejects.
"""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs

from djray import schema as S
from djray.io.fs import open_sequential
from djray.io.rows import BlockBuilder, decode_caption, short

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
CAPTION_EXT = "txt"
JSON_EXT = "json"
# What a damaged tar or gzip stream raises; OSError from the filesystem itself is deliberately not caught.
_DAMAGE = (tarfile.TarError, EOFError, zlib.error, UnicodeError)


@dataclass
class _Sample:
    key: str
    members: dict[str, bytes] = field(default_factory=dict)


def split_name(name: str) -> tuple[str, str]:
    """'dir/000123.jpg' → ('dir/000123', 'jpg'); the extension is everything after the basename's first dot."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{head}/{stem}" if head else stem
    return key, ext.lower() if dot else ""


def is_unsafe(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts


class _TarInfo(tarfile.TarInfo):
    """Records on the TarFile why header parsing failed. After the first member, stream-mode tarfile ends the archive
    silently on a short header (a tar cut inside a header) or an invalid one (garbage in place of a header); the
    reader must tell those from the end-of-archive zero block. A file ending exactly at a block boundary, without the
    zero blocks, is accepted as libarchive does (some writers omit them)."""

    @classmethod
    def fromtarfile(cls, tar):
        try:
            return super().fromtarfile(tar)
        except (tarfile.TruncatedHeaderError, tarfile.InvalidHeaderError) as e:
            tar.bad_header = e
            raise


def read_webdataset_shard(fs: pafs.FileSystem, path: str, src_shard: str, shard_order: int,
                          rows_per_block: int = 256) -> Iterator[pa.Table]:
    # tarfile decompresses .tar.gz itself, so a damaged gzip stream is a TarError (a reject) and an OSError can only
    # come from the storage (the shard fails and is retried)
    with open_sequential(fs, path) as stream:
        yield from read_tar_stream(stream, src_shard, shard_order, rows_per_block)


def read_tar_stream(stream, src_shard: str, shard_order: int, rows_per_block: int = 256) -> Iterator[pa.Table]:
    """The rows of one tar (plain or gzip) read front to back from a file object: see the module docstring."""
    out = BlockBuilder(src_shard, shard_order, rows_per_block)
    current: _Sample | None = None  # the sample being collected; emitted as soon as a member shows it is complete
    reading: str | None = None  # key of the member whose data is being read (None between members)
    try:
        with tarfile.open(fileobj=stream, mode="r|*", tarinfo=_TarInfo) as tar:
            for member in tar:
                tar.members = []  # stream mode keeps every header otherwise: memory would grow with the shard
                if member.isdir():
                    continue
                if is_unsafe(member.name) or not member.isfile():
                    kind = "unsafe member name" if is_unsafe(member.name) else f"non-file member (type {member.type!r})"
                    yield from out.add(key=None, reject=(S.Reason.UNSAFE_MEMBER_PATH, f"{kind}: {short(member.name)}"))
                    continue
                key, ext = split_name(member.name)
                if current is not None and (current.key != key or ext in current.members):
                    yield from _emit(out, current)
                    current = None
                current = current or _Sample(key)
                reading = key
                current.members[ext] = tar.extractfile(member).read()  # type: ignore[union-attr]
                reading = None
            if getattr(tar, "bad_header", None) is not None:
                raise tarfile.ReadError(f"damaged member header at byte {tar.offset}: {tar.bad_header}")
    except _DAMAGE as e:
        if reading is None and current is not None:  # damage between members: the pending sample is whole
            yield from _emit(out, current)
        current = None
        detail = f"unreadable after {out.next_index} rows: {type(e).__name__}: {short(str(e))}"
        yield from out.add(key=reading, reject=(S.Reason.CORRUPT_SHARD, detail))
    if current is not None:
        yield from _emit(out, current)
    yield from out.finish()


def _emit(out: BlockBuilder, sample: _Sample) -> Iterator[pa.Table]:
    image_ext = next((e for e in IMAGE_EXTS if e in sample.members), None)
    caption, invalid = decode_caption(sample.members.get(CAPTION_EXT))
    raw_json = sample.members.get(JSON_EXT)
    src_json = raw_json.decode("utf-8", errors="replace") if raw_json is not None else None
    if image_ext is None:
        found = ",".join(sorted(sample.members)) or "none"
        yield from out.add(key=sample.key, caption=caption, caption_invalid=invalid, src_json=src_json,
                           reject=(S.Reason.MISSING_IMAGE, f"no image member (found: {short(found, 80)})"))
        return
    yield from out.add(key=sample.key, image=sample.members[image_ext], caption=caption,
                       caption_invalid=invalid, src_json=src_json)
