"""Image decoding and the canonical geometry shared by the patch scorer and the trainer (ARCHITECTURE §2).

Everything that decides which pixels a patch index refers to lives here, so the trainer can reproduce it exactly:

    img = open_image(data, max_pixels)   # PIL decode, first frame, EXIF orientation, 8-bit RGB
    crop = canonical_crop(img, S)        # shorter side → S (PIL BICUBIC), center crop S×S, uint8 (S, S, 3)

`GEOMETRY` / `geometry_metadata()` describe the same steps as data; they go into the Parquet footer metadata together
with the Pillow version (its resampling kernels define the pixels) and `decode.max_pixels`. The trainer compares the
whole record with its own (`geometry_mismatch`) and decodes with the recorded `max_pixels`.
Only PIL and numpy are used (plus the reason codes from `djray.schema`, which imports nothing from djray).
"""

from __future__ import annotations

import io
import re
import warnings
from typing import Any, TypeVar

import numpy as np
import PIL
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from djray.schema import Reason

# Formats we decode. MPO (multi-picture JPEG) is reached through the JPEG plugin, so it is not passed to Image.open.
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"})
_OPEN_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# Formats PIL cannot identify but that are common in scraped data: reported as unsupported, not corrupt.
_MAGIC = ((b"%PDF", "PDF"), (b"<svg", "SVG"), (b"<?xml", "XML/SVG"), (b"<!doctype", "HTML"), (b"<html", "HTML"),
          (b"\xff\x0a", "JPEG XL"), (b"\x00\x00\x00\x0cJXL ", "JPEG XL"))

DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own decompression-bomb limit; `decode.max_pixels` default

GEOMETRY: dict[str, Any] = {
    "decode": "PIL",
    "frame": "first",
    "exif_transpose": True,
    "color": "RGB8; alpha composited on white; 16-bit samples >> 8",
    "resize": "shorter_side",
    "long_side": "max(S, round(long * S / short))",  # Python round(): half to even
    "interpolation": "bicubic",
    "crop": "center",
    "crop_offset": "floor((w-S)/2), floor((h-S)/2)",
}


class ImageRejected(Exception):
    """An image that cannot be used; `reason` is a `djray.schema.Reason` code, `detail` a short message."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _short(e: BaseException, limit: int = 160) -> str:
    """`Type: message`, one line, at most ~limit chars, without object reprs such as <_io.BytesIO object at 0x…>."""
    msg = re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "<bytes>", " ".join(str(e).split()))
    return f"{type(e).__name__}: {msg[:limit]}" if msg else type(e).__name__


def _identify_unsupported(data: bytes) -> str | None:
    """Name of a format we do not decode, if the bytes look like one (None: unknown, i.e. corrupt)."""
    try:
        with Image.open(io.BytesIO(data)) as other:  # all plugins, header only: nothing is decoded
            return str(other.format)
    except Exception:
        pass
    head = data[:64].lstrip().lower()
    for magic, name in _MAGIC:
        if head.startswith(magic.lower()):
            return name
    if data[4:8] == b"ftyp":
        return "ISO-BMFF (" + data[8:12].decode("ascii", "replace") + ")"  # HEIC, AVIF, MP4 …
    return None


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    w, h = size
    if w * h > max_pixels:
        raise ImageRejected(Reason.DECOMPRESSION_BOMB, f"{w}x{h} = {w * h} pixels > max_pixels {max_pixels}")
    if w <= 0 or h <= 0:
        raise ImageRejected(Reason.CORRUPT_IMAGE, f"invalid size {w}x{h}")


def _container_truncated(data: bytes) -> str | None:
    """Containers whose header points past the end of the data: RIFF (WebP) states its payload size, TIFF the
    offset of its first directory (written after the pixels by PIL). Their decoders do not say "truncated"."""
    if data[:4] == b"RIFF" and len(data) >= 8 and int.from_bytes(data[4:8], "little") + 8 > len(data):
        return "RIFF/WebP"
    if data[:4] in (b"II*\x00", b"MM\x00*") and len(data) >= 8:
        if int.from_bytes(data[4:8], "little" if data[:2] == b"II" else "big") >= len(data):
            return "TIFF"
    return None


def _rejected_from(e: Exception, data: bytes) -> ImageRejected:
    """Map an exception raised by PIL while opening/loading `data` to a reject reason."""
    if isinstance(e, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return ImageRejected(Reason.DECOMPRESSION_BOMB, _short(e))
    container = _container_truncated(data)
    if container is not None:
        return ImageRejected(Reason.TRUNCATED_IMAGE, f"{container} data ends early ({len(data)} bytes); {_short(e)}")
    if isinstance(e, UnidentifiedImageError):
        other = _identify_unsupported(data)
        if other is not None:
            return ImageRejected(Reason.UNSUPPORTED_FORMAT, f"format {other} is not allowed")
        return ImageRejected(Reason.CORRUPT_IMAGE, "cannot identify image format")
    text = str(e).lower()
    if isinstance(e, EOFError) or (isinstance(e, OSError) and ("truncated" in text or "premature end" in text)):
        return ImageRejected(Reason.TRUNCATED_IMAGE, _short(e))
    return ImageRejected(Reason.CORRUPT_IMAGE, _short(e))


def _decode(data: bytes, max_pixels: int) -> Image.Image:
    img = Image.open(io.BytesIO(data), formats=_OPEN_FORMATS)
    if img.format not in ALLOWED_FORMATS:
        raise ImageRejected(Reason.UNSUPPORTED_FORMAT, f"format {img.format} is not allowed")
    _check_size(img.size, max_pixels)  # header only: no pixel decoded yet
    img.load()  # first frame only
    _check_size(img.size, max_pixels)
    try:
        img = ImageOps.exif_transpose(img)
    except Exception as e:
        raise ImageRejected(Reason.CORRUPT_IMAGE, "unreadable EXIF orientation: " + _short(e)) from None
    return to_rgb(img)


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode encoded image bytes to an 8-bit RGB image in display orientation. Raises `ImageRejected`.

    The header size is checked against `max_pixels` before any pixel is decoded (independently of PIL's global
    `Image.MAX_IMAGE_PIXELS`; PIL's own bomb error, if it fires first, is reported the same way). Only the first
    frame of animated images is decoded. Requires `ImageFile.LOAD_TRUNCATED_IMAGES` to be False (RuntimeError
    otherwise), so truncated files are rejected instead of being padded with grey.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL ImageFile.LOAD_TRUNCATED_IMAGES is True: truncated images would decode as grey")
    if not data:
        raise ImageRejected(Reason.CORRUPT_IMAGE, "empty image bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bomb warnings: see _check_size; EXIF/palette warnings are not actionable
        try:
            return _decode(data, max_pixels)
        except ImageRejected:
            raise
        except Exception as e:
            raise _rejected_from(e, data) from None


def _white(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB for every PIL mode: alpha is composited on white; 16/32-bit integer and float samples are scaled
    (PIL's plain convert() clips them to 0..255, which turns 16-bit images white)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("RGBA", "RGBa", "LA", "La", "PA", "P"):  # P: palette may carry transparency (tRNS / RGBA palette)
        if mode == "La":
            img = img.convert("LA")  # PIL has no La → RGBA conversion; premultiplied → straight alpha
        return _white(img)
    if mode.startswith("I;16"):
        a = (np.asarray(img).astype(np.uint16) >> 8).astype(np.uint8)
    elif mode == "I":  # 32-bit int: in practice 16-bit (or 8-bit) samples
        a32 = np.asarray(img).astype(np.int64)
        a = (np.clip(a32, 0, 65535) >> 8 if a32.max(initial=0) > 255 else np.clip(a32, 0, 255)).astype(np.uint8)
    elif mode == "F":  # float: 0..1 scaled to 0..255, else clipped to 0..255
        f = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        a = np.clip(np.rint(f * 255.0 if f.max(initial=0.0) <= 1.0 else f), 0, 255).astype(np.uint8)
    else:  # 1, L, P, CMYK, YCbCr, LAB, HSV, RGBX, …
        return img.convert("RGB")
    return Image.fromarray(np.ascontiguousarray(a)).convert("RGB")  # 2-D uint8 → L


def canonical_crop(img: Image.Image, size: int) -> np.ndarray:
    """The canonical crop: uint8 array (size, size, 3), C order.

    The shorter side is resized to `size` with PIL BICUBIC; the longer side to `max(size, round(long*size/short))`
    (Python round). Then a size×size window is cut at left=(w-size)//2, top=(h-size)//2 of the resized image.
    `img` must be RGB (see `open_image`).
    """
    if img.mode != "RGB":
        raise ValueError(f"canonical_crop needs an RGB image, got mode {img.mode}")
    if size < 1:
        raise ValueError("size must be >= 1")
    w, h = img.size
    if w <= h:
        nw, nh = size, max(size, round(h * size / w))
    else:
        nw, nh = max(size, round(w * size / h)), size
    resized = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.ascontiguousarray(np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.uint8))


def geometry_metadata(image_size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, Any]:
    """GEOMETRY plus the Pillow version, the crop size and the pixel limit, as written to the Parquet footer
    (`djray.geometry`)."""
    if int(image_size) < 1:
        raise ValueError("image_size must be >= 1")
    if int(max_pixels) < 1:
        raise ValueError("max_pixels must be >= 1")
    return {**GEOMETRY, "pil_version": PIL.__version__, "image_size": int(image_size), "max_pixels": int(max_pixels)}


def geometry_mismatch(recorded: dict[str, Any]) -> list[str]:
    """The keys where a footer record disagrees with this process's decode/resize/crop (`GEOMETRY` + Pillow version),
    each as `key: recorded → here`; a key missing from the record counts as a disagreement. `image_size` and
    `max_pixels` are parameters of the record, not of this process: the caller checks / uses them."""
    here = {**GEOMETRY, "pil_version": PIL.__version__}
    out = []
    for key in sorted(set(here) | (set(recorded) - {"image_size", "max_pixels"})):
        got, want = recorded.get(key, "<not recorded>"), here.get(key, "<unknown here>")
        if got != want:
            out.append(f"{key}: {got!r} → {want!r}")
    return out


IndexT = TypeVar("IndexT", int, np.ndarray)


def flip_patch_index(idx: IndexT, grid_w: int) -> IndexT:
    """Raster patch index after a horizontal flip of the crop: (row, col) → (row, grid_w-1-col)."""
    row, col = idx // grid_w, idx % grid_w
    return row * grid_w + (grid_w - 1 - col)
