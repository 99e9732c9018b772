"""Building blocks for shard readers: rows in the source schema, emitted as bounded Arrow blocks.

Every reader ends a shard with one marker row (src_index -1, reason END_OF_SHARD) whose SHARD_ROWS column holds the
number of rows the shard produced. The writer uses it to know when a shard is complete; it is never written out.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from djray import schema as S


class BlockBuilder:
    """Accumulates source rows for one shard and yields Arrow tables of at most `rows_per_block` rows."""

    def __init__(self, src_shard: str, shard_order: int, rows_per_block: int):
        self.src_shard = src_shard
        self.shard_order = shard_order
        self.rows_per_block = rows_per_block
        self.next_index = 0
        self._rows: list[dict[str, Any]] = []

    def add(self, *, key: str | None, image: bytes | None = None, caption: str | None = None,
            caption_invalid: bool = False, src_json: str | None = None,
            reject: tuple[str, str] | None = None) -> Iterator[pa.Table]:
        """Add one row (a sample, or a read-stage reject given as (reason, detail)); yields a block when full.

        Text that cannot be UTF-8 (lone surrogates, e.g. from a tar member name decoded with surrogateescape) never
        reaches Arrow: such a key rejects the row as `invalid_key` (key null); in other text it becomes U+FFFD.
        """
        if key is not None and _SURROGATES.search(key):
            reject = reject or (S.Reason.INVALID_KEY, f"key is not valid UTF-8: {short(key)}")
            key = None
        if caption is not None and _SURROGATES.search(caption):
            caption, caption_invalid = _SURROGATES.sub("\ufffd", caption), True
        row = {
            S.KEY: key,
            S.SRC_SHARD: self.src_shard,
            S.SRC_INDEX: self.next_index,
            S.SHARD_ORDER: self.shard_order,
            S.IMAGE: image,
            S.CAPTION_RAW: caption,
            S.SRC_JSON: _scrub(src_json),
            S.CAPTION_INVALID_UTF8: caption_invalid,
            S.REJECT_STAGE: S.Stage.READ if reject else None,
            S.REJECT_REASON: reject[0] if reject else None,
            S.REJECT_DETAIL: _scrub(reject[1]) if reject else None,
            S.SHARD_ROWS: None,
        }
        self.next_index += 1
        self._rows.append(row)
        if len(self._rows) >= self.rows_per_block:
            yield self._flush()

    def finish(self) -> Iterator[pa.Table]:
        """Yield the remaining rows plus the end-of-shard marker."""
        self._rows.append({
            S.KEY: None, S.SRC_SHARD: self.src_shard, S.SRC_INDEX: -1, S.SHARD_ORDER: self.shard_order,
            S.IMAGE: None, S.CAPTION_RAW: None, S.SRC_JSON: None, S.CAPTION_INVALID_UTF8: False,
            S.REJECT_STAGE: S.Stage.READ, S.REJECT_REASON: S.END_OF_SHARD, S.REJECT_DETAIL: None,
            S.SHARD_ROWS: self.next_index,
        })
        yield self._flush()

    def _flush(self) -> pa.Table:
        table = pa.Table.from_pylist(self._rows, schema=S.SOURCE_SCHEMA)
        self._rows = []
        return table


_SURROGATES = re.compile("[\ud800-\udfff]")  # the only str content UTF-8 cannot encode


def _scrub(text: str | None) -> str | None:
    return _SURROGATES.sub("\ufffd", text) if text is not None else None


def decode_caption(raw: bytes | None) -> tuple[str | None, bool]:
    """UTF-8 caption bytes → (text, invalid). Invalid bytes become U+FFFD; the caption policy decides later."""
    if raw is None:
        return None, False
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), True


def short(text: object, limit: int = 200) -> str:
    """A bounded, printable representation of untrusted text for reject details."""
    s = repr(text) if not isinstance(text, str) else text.encode("unicode_escape", "backslashreplace").decode("ascii")
    return s if len(s) <= limit else s[: limit - 3] + "..."
