"""DecodeOp in-process: sizes, reject columns, the canonical crop column, and per-row robustness."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageFile
from pydantic import ValidationError

import djray.ops.decode as decode_mod
from djray import schema as S
from djray.geometry import canonical_crop, open_image
from djray.ops.base import apply_op_output
from djray.ops.decode import DecodeOp, DecodeParams
from djray.schema import Reason

from corpus import bomb_png, enc, noise


def table(images: list[bytes | None], rejected: dict[int, str] | None = None) -> pa.Table:
    rejected = rejected or {}
    rows = [
        {
            S.KEY: f"k{i}",
            S.SRC_SHARD: "shard-0.tar",
            S.SRC_INDEX: i,
            S.SHARD_ORDER: 0,
            S.IMAGE: img,
            S.CAPTION_RAW: "a photo",
            S.CAPTION_INVALID_UTF8: False,
            S.REJECT_STAGE: S.Stage.READ if i in rejected else None,
            S.REJECT_REASON: rejected.get(i),
            S.REJECT_DETAIL: "earlier" if i in rejected else None,
        }
        for i, img in enumerate(images)
    ]
    return pa.Table.from_pylist(rows, schema=S.SOURCE_SCHEMA)


def run(images: list[bytes | None], rejected: dict[int, str] | None = None, **params) -> tuple[pa.Table, dict]:
    op = DecodeOp(DecodeParams(**params))
    op.setup()
    batch = table(images, rejected)
    out = op(batch)
    for name, col in out.items():
        assert len(col) == batch.num_rows, name
    return batch, out


GOOD = enc(noise(80, 60), "JPEG")
FULL = enc(noise(120, 90, seed=3), "PNG")
CASES: list[tuple[bytes | None, str | None]] = [
    (GOOD, None),
    (None, Reason.MISSING_IMAGE),
    (b"", Reason.CORRUPT_IMAGE),
    (np.random.default_rng(0).bytes(3000), Reason.CORRUPT_IMAGE),
    (FULL[: len(FULL) // 2], Reason.TRUNCATED_IMAGE),
    (GOOD[: len(GOOD) // 2], Reason.TRUNCATED_IMAGE),
    (enc(noise(16, 16), "ICO"), Reason.UNSUPPORTED_FORMAT),
    (bomb_png(20000, 20000), Reason.DECOMPRESSION_BOMB),
    (enc(noise(100, 20), "PNG"), Reason.IMAGE_TOO_SMALL),
    (FULL, None),
]


def test_mixed_batch_reasons_and_columns():
    _, out = run([c[0] for c in CASES], max_pixels=1_000_000, min_side=32)
    assert out[S.REJECT_REASON].to_pylist() == [c[1] for c in CASES]
    details = out[S.REJECT_DETAIL].to_pylist()
    assert all((d is None) == (c[1] is None) for d, c in zip(details, CASES))
    assert all(d is None or len(d) < 300 for d in details)
    assert out[S.IMG_WIDTH].type == pa.int32() and out[S.IMG_HEIGHT].type == pa.int32()
    widths, heights = out[S.IMG_WIDTH].to_pylist(), out[S.IMG_HEIGHT].to_pylist()
    assert (widths[0], heights[0]) == (80, 60) and (widths[-1], heights[-1]) == (120, 90)
    assert (widths[8], heights[8]) == (100, 20)  # too small: size known, still rejected
    assert all(w is None for w in widths[1:8]) and all(h is None for h in heights[1:8])
    assert S.PIXELS not in out


def test_pixels_column_is_the_canonical_crop():
    _, out = run([GOOD, b"junk", FULL], image_size=32)
    col = out[S.PIXELS]
    assert col.type == pa.binary(32 * 32 * 3)
    values = col.to_pylist()
    assert values[1] is None
    for i, data in ((0, GOOD), (2, FULL)):
        expected = canonical_crop(open_image(data, 10**9), 32)
        np.testing.assert_array_equal(np.frombuffer(values[i], np.uint8).reshape(32, 32, 3), expected)
    assert S.PIXELS in DecodeOp(DecodeParams(image_size=32)).writes
    assert S.PIXELS not in DecodeOp(DecodeParams()).writes


def test_already_rejected_rows_untouched():
    batch, out = run([GOOD, GOOD, b"junk"], rejected={1: Reason.MISSING_KEY, 2: Reason.UNSAFE_MEMBER_PATH})
    assert out[S.REJECT_REASON].to_pylist() == [None, None, None]
    assert out[S.IMG_WIDTH].to_pylist() == [80, None, None]
    merged = apply_op_output(batch, DecodeOp(DecodeParams()), out)
    assert merged.column(S.REJECT_REASON).to_pylist() == [None, Reason.MISSING_KEY, Reason.UNSAFE_MEMBER_PATH]
    assert merged.column(S.REJECT_STAGE).to_pylist() == [None, S.Stage.READ, S.Stage.READ]


def test_apply_op_output_stamps_decode_stage():
    batch, out = run([GOOD, b"junk"], rejected={})
    merged = apply_op_output(batch, DecodeOp(DecodeParams()), out)
    assert merged.column(S.REJECT_STAGE).to_pylist() == [None, S.Stage.DECODE]
    assert merged.column(S.REJECT_REASON).to_pylist() == [None, Reason.CORRUPT_IMAGE]
    assert merged.column(S.IMG_WIDTH).to_pylist() == [80, None]


def test_size_is_after_exif_orientation():
    exif = Image.Exif()
    exif[0x0112] = 6
    _, out = run([enc(noise(64, 40), "JPEG", exif=exif.tobytes())])
    assert (out[S.IMG_WIDTH][0].as_py(), out[S.IMG_HEIGHT][0].as_py()) == (40, 64)


def test_one_bad_image_never_raises(monkeypatch):
    real = decode_mod.open_image

    def flaky(data: bytes, max_pixels: int) -> Image.Image:
        if data == b"oom":
            raise MemoryError("cannot allocate")
        if data == b"value":
            raise ValueError("weird")
        return real(data, max_pixels)

    monkeypatch.setattr(decode_mod, "open_image", flaky)
    _, out = run([b"oom", GOOD, b"value"], image_size=16)
    assert out[S.REJECT_REASON].to_pylist() == [Reason.CORRUPT_IMAGE, None, Reason.CORRUPT_IMAGE]
    details = out[S.REJECT_DETAIL].to_pylist()
    assert "MemoryError" in details[0] and "ValueError" in details[2]
    assert out[S.PIXELS].to_pylist()[1] is not None


def test_crop_failure_is_a_row_reject(monkeypatch):
    def boom(img: Image.Image, size: int) -> np.ndarray:
        raise MemoryError

    monkeypatch.setattr(decode_mod, "canonical_crop", boom)
    _, out = run([GOOD], image_size=16)
    assert out[S.REJECT_REASON].to_pylist() == [Reason.CORRUPT_IMAGE]
    assert out[S.IMG_WIDTH].to_pylist() == [None] and out[S.PIXELS].to_pylist() == [None]


def test_truncated_is_rejected_even_if_someone_set_load_truncated_images(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    _, out = run([FULL[: len(FULL) // 2]])
    assert out[S.REJECT_REASON].to_pylist() == [Reason.TRUNCATED_IMAGE]


def test_multi_chunk_batch():
    batch = pa.concat_tables([table([GOOD]), table([b"junk", FULL])])
    out = DecodeOp(DecodeParams())(batch)
    assert out[S.REJECT_REASON].to_pylist() == [None, Reason.CORRUPT_IMAGE, None]


def test_params_validation():
    for bad in ({"max_pixels": 0}, {"min_side": 0}, {"image_size": 0}, {"nope": 1}):
        with pytest.raises(ValidationError):
            DecodeParams(**bad)
    assert DecodeParams().max_pixels == 89_478_485 and DecodeParams().min_side == 32
    op = DecodeOp()
    assert op.name == "decode" and op.stage == S.Stage.DECODE and op.reads == (S.IMAGE,)
