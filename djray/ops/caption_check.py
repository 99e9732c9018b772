"""Caption check (decode stage): reject rows whose caption is missing, blank or was not valid UTF-8.

It only rejects; it never rewrites a caption, and it keeps hostile-but-visible text (prompt injections, control
characters among visible text, bidi overrides…) for the text stage to deal with.
"""

from __future__ import annotations

import unicodedata
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa

from djray import schema as S
from djray.ops.base import Op, Params, Resources, alive_mask
from djray.schema import Reason, Stage

# Invisible characters that are neither whitespace (str.isspace) nor format/control characters (Cf/Cc).
_INVISIBLE = frozenset("\u034f\u115f\u1160\u3164\uffa0\u2800")


class CaptionParams(Params):
    on_empty: Literal["reject", "keep"] = "reject"
    on_undecodable: Literal["reject", "replace"] = "reject"  # replace: keep the U+FFFD-decoded caption


def is_blank(text: str | None) -> bool:
    """True for None, "" and text made only of whitespace, zero-width/format characters (U+200B, U+FEFF, bidi
    controls…), control characters and a few invisible fillers (Hangul filler, braille blank)."""
    if text is None:
        return True
    return all(ch.isspace() or ch in _INVISIBLE or unicodedata.category(ch) in ("Cf", "Cc") for ch in text)


class CaptionCheckOp(Op):
    name: ClassVar[str] = "caption_check"
    stage: ClassVar[str] = Stage.DECODE
    reads: ClassVar[tuple[str, ...]] = (S.CAPTION_RAW, S.CAPTION_INVALID_UTF8)
    writes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: CaptionParams | None = None, resources: Resources | None = None):
        self.params: CaptionParams = params or CaptionParams()
        super().__init__(self.params, resources)

    def __call__(self, batch: pa.Table) -> dict[str, Any]:
        p = self.params
        n = batch.num_rows
        captions = batch.column(S.CAPTION_RAW).to_pylist()
        invalid = batch.column(S.CAPTION_INVALID_UTF8).to_pylist()
        reasons: list[str | None] = [None] * n
        details: list[str | None] = [None] * n
        for i in np.flatnonzero(alive_mask(batch)):
            caption = captions[i]
            if invalid[i] and p.on_undecodable == "reject":
                reasons[i], details[i] = Reason.UNDECODABLE_CAPTION, "caption bytes are not valid UTF-8"
            elif p.on_empty == "reject" and is_blank(caption):
                reasons[i] = Reason.EMPTY_CAPTION
                if caption is None:
                    details[i] = "caption is missing"
                elif caption == "":
                    details[i] = "caption is empty"
                else:
                    details[i] = f"caption has only whitespace or invisible characters ({len(caption)} chars)"
        return {
            S.REJECT_REASON: pa.array(reasons, type=pa.string()),
            S.REJECT_DETAIL: pa.array(details, type=pa.string()),
        }
