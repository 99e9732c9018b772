"""Decode stage: open every alive image once, record its size, reject what cannot be used, optionally emit the crop.

`img_width` / `img_height` are the size AFTER EXIF orientation (the size the image is displayed and cropped at),
so a portrait photo stored landscape with orientation 6 reports width < height. They are set for every image
that decoded (including rows rejected as too small) and null otherwise.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
from PIL import ImageFile
from pydantic import Field

from djray import schema as S
from djray.geometry import DEFAULT_MAX_PIXELS, ImageRejected, canonical_crop, open_image
from djray.ops.base import Op, Params, Resources, alive_mask
from djray.schema import Reason, Stage


class DecodeParams(Params):
    # width*height above this → decompression_bomb (checked on the header)
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0)
    min_side: int = Field(32, ge=1)  # shorter side below this → image_too_small
    image_size: int | None = Field(None, ge=1)  # when set, also emit the canonical crop in `_pixels`
    clip_image_size: int | None = Field(None, ge=1)  # when set, also emit the same crop at this size: `_clip_pixels`


class DecodeOp(Op):
    name: ClassVar[str] = "decode"
    stage: ClassVar[str] = Stage.DECODE
    reads: ClassVar[tuple[str, ...]] = (S.IMAGE,)
    writes: ClassVar[tuple[str, ...]] = (S.IMG_WIDTH, S.IMG_HEIGHT, S.IMG_SHA256)  # + S.PIXELS with image_size

    def __init__(self, params: DecodeParams | None = None, resources: Resources | None = None):
        self.params: DecodeParams = params or DecodeParams()
        super().__init__(self.params, resources)
        if self.params.image_size is not None:
            self.writes = (*type(self).writes, S.PIXELS)  # type: ignore[misc]  # per-instance: depends on params
        if self.params.clip_image_size is not None:
            self.writes = (*self.writes, S.CLIP_PIXELS)  # type: ignore[misc]

    def setup(self) -> None:
        ImageFile.LOAD_TRUNCATED_IMAGES = False

    def __call__(self, batch: pa.Table) -> dict[str, Any]:
        # This worker owns its PIL state: truncated images must fail to load, never be padded with grey.
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        p = self.params
        n = batch.num_rows
        alive = alive_mask(batch)
        images = batch.column(S.IMAGE).to_pylist()
        digests = [hashlib.sha256(data).hexdigest() if data is not None else None for data in images]
        width: list[int | None] = [None] * n
        height: list[int | None] = [None] * n
        pixels: list[bytes | None] = [None] * n
        clip_pixels: list[bytes | None] = [None] * n
        reasons: list[str | None] = [None] * n
        details: list[str | None] = [None] * n
        for i in np.flatnonzero(alive):
            data = images[i]
            if data is None:
                reasons[i], details[i] = Reason.MISSING_IMAGE, "image is null"
                continue
            try:
                img = open_image(data, p.max_pixels)
                width[i], height[i] = img.size
                if min(img.size) < p.min_side:
                    reasons[i] = Reason.IMAGE_TOO_SMALL
                    details[i] = f"{img.width}x{img.height}: shorter side < min_side {p.min_side}"
                else:
                    if p.image_size is not None:
                        pixels[i] = canonical_crop(img, p.image_size).tobytes()
                    if p.clip_image_size is not None:
                        clip_pixels[i] = canonical_crop(img, p.clip_image_size).tobytes()
            except ImageRejected as e:
                reasons[i], details[i] = e.reason, e.detail
            except Exception as e:  # one bad image never fails the batch (MemoryError, ValueError, …)
                width[i] = height[i] = pixels[i] = clip_pixels[i] = None
                reasons[i] = Reason.CORRUPT_IMAGE
                details[i] = f"{type(e).__name__} while decoding: {' '.join(str(e).split())[:160]}"
        out: dict[str, Any] = {
            S.IMG_WIDTH: pa.array(width, type=pa.int32()),
            S.IMG_HEIGHT: pa.array(height, type=pa.int32()),
            S.IMG_SHA256: pa.array(digests, type=pa.string()),
            S.REJECT_REASON: pa.array(reasons, type=pa.string()),
            S.REJECT_DETAIL: pa.array(details, type=pa.string()),
        }
        if p.image_size is not None:
            out[S.PIXELS] = pa.array(pixels, type=pa.binary(p.image_size * p.image_size * 3))
        if p.clip_image_size is not None:
            out[S.CLIP_PIXELS] = pa.array(clip_pixels, type=pa.binary(p.clip_image_size * p.clip_image_size * 3))
        return out
