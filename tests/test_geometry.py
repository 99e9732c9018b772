"""djray.geometry: decoding every mode/format to RGB, reject reasons, and the canonical crop. Images are made here."""

from __future__ import annotations

import io
import json
import time
import warnings

import numpy as np
import pytest
from PIL import Image, ImageFile, PngImagePlugin

from djray.geometry import (
    GEOMETRY,
    ImageRejected,
    canonical_crop,
    flip_patch_index,
    geometry_metadata,
    geometry_mismatch,
    open_image,
    to_rgb,
)
from djray.schema import Reason

from corpus import bomb_png, enc, noise

BIG = 10**9


def reason_of(data: bytes, max_pixels: int = BIG) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        open_image(data, max_pixels)
    assert info.value.detail and len(info.value.detail) < 300 and " at 0x" not in info.value.detail
    return info.value


def px(img: Image.Image, xy: tuple[int, int]) -> np.ndarray:
    return np.asarray(img)[xy[1], xy[0]].astype(int)


# ---- formats and modes -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_common_formats_decode_to_rgb(fmt):
    src = Image.new("RGB", (48, 40), (200, 30, 60))
    img = open_image(enc(src, fmt), BIG)
    assert img.mode == "RGB" and img.size == (48, 40)
    assert np.abs(px(img, (20, 20)) - (200, 30, 60)).max() <= 8  # lossy JPEG/WebP/GIF palette


def test_mpo_first_frame():
    data = enc(Image.new("RGB", (32, 32), (255, 0, 0)), "MPO", save_all=True,
               append_images=[Image.new("RGB", (32, 32), (0, 0, 255))])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    assert np.abs(px(open_image(data, BIG), (5, 5)) - (255, 0, 0)).max() <= 8


def test_cmyk_jpeg():
    img = open_image(enc(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG"), BIG)  # pure red in CMYK
    assert img.mode == "RGB" and np.abs(px(img, (5, 5)) - (255, 0, 0)).max() <= 8


def test_palette_png_with_transparency_goes_on_white():
    p = Image.new("P", (8, 8), 0)
    p.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)  # index 0 black (transparent), index 1 green
    p.putpixel((1, 1), 1)
    img = open_image(enc(p, "PNG", transparency=0), BIG)
    assert tuple(px(img, (0, 0))) == (255, 255, 255)  # transparent black → white, not black
    assert tuple(px(img, (1, 1))) == (0, 255, 0)


def test_rgba_png_alpha_composited_on_white():
    a = np.zeros((4, 4, 4), np.uint8)
    a[0, 0] = (255, 0, 0, 0)  # fully transparent red → white
    a[0, 1] = (255, 0, 0, 255)  # opaque red
    a[0, 2] = (0, 0, 0, 128)  # half transparent black → mid grey
    img = open_image(enc(Image.fromarray(a), "PNG"), BIG)
    assert tuple(px(img, (0, 0))) == (255, 255, 255)
    assert tuple(px(img, (1, 0))) == (255, 0, 0)
    assert np.abs(px(img, (2, 0)) - 127).max() <= 1


def test_la_png_alpha_composited_on_white():
    la = Image.merge("LA", (Image.new("L", (4, 4), 0), Image.new("L", (4, 4), 0)))
    assert tuple(px(open_image(enc(la, "PNG"), BIG), (0, 0))) == (255, 255, 255)


def test_16bit_grayscale_png_is_scaled_not_clipped():
    g = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (8, 1))
    data = enc(Image.fromarray(g), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    out = np.asarray(open_image(data, BIG))
    assert out.dtype == np.uint8 and out.shape == (8, 256, 3)
    np.testing.assert_array_equal(out[..., 0], (g >> 8).astype(np.uint8))  # a gradient, not all 255
    assert out.min() == 0 and out.max() == 255 and len(np.unique(out)) > 200


def test_16bit_tiff_and_big_endian_and_int32_float_modes():
    g = np.array([[0, 256, 32768, 65535]], np.uint16)
    assert np.asarray(open_image(enc(Image.fromarray(g), "TIFF"), BIG))[0, :, 0].tolist() == [0, 1, 128, 255]
    be = Image.frombytes("I;16B", (4, 1), g.astype(">u2").tobytes())
    assert np.asarray(to_rgb(be))[0, :, 1].tolist() == [0, 1, 128, 255]
    i32 = Image.fromarray(g.astype(np.int32))
    assert np.asarray(to_rgb(i32))[0, :, 2].tolist() == [0, 1, 128, 255]
    i8 = Image.fromarray(np.array([[0, 10, 255]], np.int32))  # 8-bit samples stored as int32
    assert np.asarray(to_rgb(i8))[0, :, 0].tolist() == [0, 10, 255]
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32))
    assert np.asarray(to_rgb(f))[0, :, 0].tolist() == [0, 128, 255]


@pytest.mark.parametrize(
    "mode,value,expected",
    [
        ("1", 1, (255, 255, 255)),
        ("L", 77, (77, 77, 77)),
        ("YCbCr", (255, 128, 128), (255, 255, 255)),
        ("HSV", (0, 255, 255), (255, 0, 0)),
        ("LAB", (255, 128, 128), (255, 255, 255)),
        ("CMYK", (0, 0, 0, 0), (255, 255, 255)),
        ("RGBX", (1, 2, 3, 0), (1, 2, 3)),
        ("PA", (0, 0), (255, 255, 255)),
        ("RGBa", (0, 0, 0, 0), (255, 255, 255)),
        ("La", (0, 0), (255, 255, 255)),
    ],
)
def test_every_mode_to_rgb(mode, value, expected):
    out = to_rgb(Image.new(mode, (3, 2), value))
    assert out.mode == "RGB" and out.size == (3, 2)
    assert np.abs(px(out, (0, 0)) - expected).max() <= 2


def test_exif_orientation_6_is_applied():
    src = Image.new("RGB", (60, 30), (255, 0, 0))
    src.paste((0, 0, 255), (0, 0, 15, 30))  # left quarter blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    img = open_image(enc(src, "JPEG", exif=exif.tobytes(), quality=95), BIG)
    assert img.size == (30, 60)  # width/height swapped
    assert np.abs(px(img, (15, 5)) - (0, 0, 255)).max() <= 10  # the left edge is now the top
    assert np.abs(px(img, (15, 55)) - (255, 0, 0)).max() <= 10


@pytest.mark.parametrize("fmt,kw", [("GIF", {}), ("WEBP", {"lossless": True}), ("PNG", {})])
def test_animated_first_frame(fmt, kw):
    frames = [Image.new("RGB", (32, 32), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    data = enc(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, **kw)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    assert tuple(px(open_image(data, BIG), (3, 3))) == (255, 0, 0)


# ---- rejects ---------------------------------------------------------------------------------------------------
def test_empty_and_random_bytes_are_corrupt():
    assert reason_of(b"").reason == Reason.CORRUPT_IMAGE
    assert reason_of(np.random.default_rng(1).bytes(2000)).reason == Reason.CORRUPT_IMAGE


def test_corrupt_jpeg_body_is_corrupt():
    data = bytearray(enc(noise(64, 64), "JPEG"))
    data[2:40] = b"\x00" * 38  # smash the headers after SOI
    assert reason_of(bytes(data)).reason in (Reason.CORRUPT_IMAGE, Reason.TRUNCATED_IMAGE)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_cut_in_half_is_truncated(fmt):
    kw = {"compression": "tiff_deflate"} if fmt == "TIFF" else {}
    data = enc(noise(96, 80), fmt, **kw)
    # PIL says "image file is truncated" / "Truncated File Read" for JPEG, PNG, GIF, BMP. libwebp only says
    # "could not create decoder object" and PIL cannot identify a TIFF whose directory (written last) is cut off:
    # for those two the container header (RIFF size, TIFF IFD offset) proves the truncation.
    assert reason_of(data[: len(data) // 2]).reason == Reason.TRUNCATED_IMAGE


@pytest.mark.parametrize(
    "data",
    [
        enc(noise(32, 32), "ICO"),
        enc(noise(32, 32).convert("L"), "EPS"),
        enc(noise(32, 32), "PPM"),
        enc(noise(32, 32), "PDF"),
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n",
        b"<!DOCTYPE html><html><body>404</body></html>",
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
    ],
    ids=["ico", "eps", "ppm", "pdf", "pdf-header", "html", "svg"],
)
def test_unsupported_format(data):
    assert reason_of(data).reason == Reason.UNSUPPORTED_FORMAT


def test_decompression_bomb_detected_from_header_without_decoding(monkeypatch):
    data = bomb_png(20000, 20000)
    assert len(data) < 200_000

    def no_load(self):
        raise AssertionError("pixels must not be decoded")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", no_load)
    for global_limit in (None, Image.MAX_IMAGE_PIXELS):  # independent of PIL's global limit
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", global_limit)
        t0 = time.perf_counter()
        e = reason_of(data, max_pixels=1_000_000)
        assert e.reason == Reason.DECOMPRESSION_BOMB and time.perf_counter() - t0 < 1.0


def test_decompression_bomb_with_warnings_as_errors_and_pils_own_limit():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL warns above MAX_IMAGE_PIXELS: must not change the outcome
        assert reason_of(bomb_png(10000, 10000), 1_000_000).reason == Reason.DECOMPRESSION_BOMB
        # above 2 × MAX_IMAGE_PIXELS PIL raises on open even if max_pixels allows it: still a bomb
        assert reason_of(bomb_png(20000, 20000), BIG).reason == Reason.DECOMPRESSION_BOMB


def test_small_bomb_png_decodes_when_allowed():
    img = open_image(bomb_png(300, 200), 1_000_000)
    assert img.size == (300, 200) and img.mode == "RGB" and np.asarray(img).max() == 0


def test_refuses_to_run_with_load_truncated_images(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError):
        open_image(enc(noise(8, 8), "PNG"), BIG)


# ---- canonical crop --------------------------------------------------------------------------------------------
def reference_crop(img: Image.Image, s: int) -> np.ndarray:
    w, h = img.size
    short, long = min(w, h), max(w, h)
    new_long = max(s, int(np.rint(long * s / short)))  # np.rint: half to even, like Python round
    nw, nh = (s, new_long) if w <= h else (new_long, s)
    arr = np.asarray(img.resize((nw, nh), resample=Image.BICUBIC))
    top, left = (nh - s) // 2, (nw - s) // 2
    return arr[top : top + s, left : left + s]


@pytest.mark.parametrize(
    "w,h,s", [(640, 480, 224), (480, 640, 224), (333, 517, 97), (517, 333, 97), (224, 224, 224), (100, 50, 64),
              (225, 1000, 224), (7, 3, 5)]
)
def test_canonical_crop_matches_reference(w, h, s):
    img = noise(w, h, seed=w * h)
    out = canonical_crop(img, s)
    assert out.shape == (s, s, 3) and out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(out, reference_crop(img, s))


def test_canonical_crop_hand_checked_offsets():
    img = noise(640, 480)
    resized = np.asarray(img.resize((299, 224), Image.BICUBIC))  # 640*224/480 = 298.67 → 299
    np.testing.assert_array_equal(canonical_crop(img, 224), resized[:, 37 : 37 + 224])  # (299-224)//2 = 37
    img = noise(3, 2)  # 3*3/2 = 4.5 → round() = 4 (half to even), left = (4-3)//2 = 0
    np.testing.assert_array_equal(canonical_crop(img, 3), np.asarray(img.resize((4, 3), Image.BICUBIC))[:, 0:3])


def test_canonical_crop_needs_rgb():
    with pytest.raises(ValueError):
        canonical_crop(Image.new("L", (10, 10)), 8)


def test_geometry_metadata_is_json():
    meta = geometry_metadata(224)
    assert meta["image_size"] == 224 and meta["interpolation"] == "bicubic" and meta["crop"] == "center"
    assert {k: meta[k] for k in GEOMETRY} == GEOMETRY
    assert json.loads(json.dumps(meta)) == meta
    import PIL

    assert meta["pil_version"] == PIL.__version__ and meta["max_pixels"] == 89_478_485
    assert geometry_metadata(224, 4_000_000)["max_pixels"] == 4_000_000
    assert geometry_mismatch(meta) == []
    assert geometry_mismatch({**meta, "interpolation": "bilinear", "pil_version": "1.0"}) == [
        "interpolation: 'bilinear' → 'bicubic'", f"pil_version: '1.0' → '{PIL.__version__}'"]


def test_flip_patch_index():
    assert flip_patch_index(0, 4) == 3 and flip_patch_index(5, 4) == 6 and flip_patch_index(7, 4) == 4
    idx = np.arange(12)
    flipped = flip_patch_index(idx, 4)
    np.testing.assert_array_equal(flipped // 4, idx // 4)  # rows unchanged
    np.testing.assert_array_equal(flip_patch_index(flipped, 4), idx)  # an involution
    grid = idx.reshape(3, 4)
    np.testing.assert_array_equal(flipped.reshape(3, 4), grid[:, ::-1])
