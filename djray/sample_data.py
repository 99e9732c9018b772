"""Synthetic image-text corpus in img2dataset's layouts (WebDataset tars or Parquet), for demos, tests and benchmarks.

Every random choice of sample ``i`` comes from ``numpy.random.default_rng([seed, i])``, so the same arguments give
byte-identical shards, and a sample's image and caption do not depend on how many shards there are (its key does).
Images are drawn scenes -- a numpy texture (noise, gradient, stripes, checker) with 1-4 named-colour shapes -- and
captions describe the scene with web-style noise (typos, boilerplate, other languages, HTML entities, empty ...).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import tarfile
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (40, 170, 60), "blue": (30, 70, 220), "yellow": (245, 215, 40),
           "orange": (250, 140, 20), "purple": (130, 50, 170), "pink": (245, 130, 190), "brown": (120, 75, 35),
           "white": (250, 250, 250), "black": (15, 15, 15)}
SHAPES = ("circle", "square", "triangle", "star", "ellipse", "diamond")
BACKGROUNDS = ("noisy", "gradient", "striped", "checkered")
FORMATS = (("jpg", "JPEG", {"quality": 90}), ("png", "PNG", {"compress_level": 3}),
           ("webp", "WEBP", {"quality": 80, "method": 0}))
FORMAT_P = (0.7, 0.2, 0.1)
# language -> (template, joiner, names of SHAPES in order); colours are left out of the translations
FOREIGN = {
    "fr": ("{} sur un fond coloré", " et ", ("un cercle", "un carré", "un triangle", "une étoile", "une ellipse",
                                             "un losange")),
    "de": ("{} auf farbigem Hintergrund", " und ", ("ein Kreis", "ein Quadrat", "ein Dreieck", "ein Stern",
                                                   "eine Ellipse", "eine Raute")),
    "es": ("{} sobre un fondo de colores", " y ", ("un círculo", "un cuadrado", "un triángulo", "una estrella",
                                                  "una elipse", "un rombo")),
    "zh": ("彩色背景上的{}", "和", ("圆形", "正方形", "三角形", "星形", "椭圆", "菱形")),
    "ja": ("カラフルな背景に{}", "と", ("円", "正方形", "三角形", "星", "楕円", "ひし形")),
    "ru": ("{} на цветном фоне", " и ", ("круг", "квадрат", "треугольник", "звезда", "эллипс", "ромб")),
}
PREFIXES = ("", "", "", "photo of ", "an image of ", "illustration: ", "vector art of ", "close-up of ")
SHORT = ("img", "image", "photo", "untitled", "IMG_{n:04d}.JPG", "DSC{n:05d}.jpg", "{n}.png")
BOILERPLATE = ("{c} Stock Photo - Image ID {n}", "Click here to download {c}", "{c} | Free vector",
               "{c} © Getty Images", "{c} - Royalty Free Stock Illustration", "Download {c} for free | wallpaper {n}")
HTML = ("&quot;{c}&quot;", "{c} &#8211; image", "{c}&nbsp;", "{c} &amp; more")
SPACES = ("  {c}  ", "\t{c}\n", "{c} \n\n", "   {c}")

PARQUET_SCHEMA = pa.schema([("key", pa.string()), ("jpg", pa.binary()), ("txt", pa.string())])
PARQUET_ROW_GROUP = 256


def _pick(rng: np.random.Generator, options, p=None):
    return options[int(rng.choice(len(options), p=p))]


def _size(rng: np.random.Generator) -> tuple[int, int]:
    """Mostly 200-600 px a side; ~6% small (64-128), ~6% large (up to 1024); varied aspect ratios."""
    u = rng.random()
    lo, hi = (64, 128) if u < 0.06 else (600, 1024) if u < 0.12 else (200, 600)
    w = int(rng.integers(lo, hi + 1))
    aspect = _pick(rng, (1.0, 1.0, 4 / 3, 3 / 2, 16 / 9, 3 / 4, 2 / 3, 9 / 16, float(rng.uniform(0.5, 2.0))))
    h = int(np.clip(round(w / aspect), max(64, lo // 2), min(1024, hi * 2)))
    return w, h


def _background(rng: np.random.Generator, w: int, h: int) -> tuple[str, Image.Image]:
    """A textured RGB background: a uint8 index map through a colour palette (or per-channel LUT for noise)."""
    kind = _pick(rng, BACKGROUNDS)
    c1, c2 = rng.integers(0, 256, (2, 3))
    if kind == "noisy":  # c1 +- 40 per pixel and channel: random bytes through a per-channel lookup table
        lut = np.clip(c1[:, None] - 40 + np.arange(256) * 81 // 256, 0, 255).ravel().tolist()
        return kind, Image.frombytes("RGB", (w, h), rng.bytes(w * h * 3)).point(lut)
    y, x = np.ogrid[:h, :w]
    theta = rng.uniform(0, np.pi)
    proj = x.astype(np.float32) * np.float32(np.cos(theta)) + y.astype(np.float32) * np.float32(np.sin(theta))
    proj -= min(0.0, np.cos(theta) * (w - 1))  # >= 0: the minimum lies on a corner
    if kind == "gradient":
        idx = proj * np.float32(255 / (abs(np.cos(theta)) * (w - 1) + np.sin(theta) * (h - 1) + 1e-6))
    elif kind == "striped":
        idx = (proj * np.float32(1 / rng.integers(6, 40))).astype(np.int32) % 2 * 255
    else:
        p = int(rng.integers(8, 64))
        idx = ((x // p % 2) ^ (y // p % 2)).astype(np.uint8) * 255
    palette = c1 + (c2 - c1) * np.arange(256)[:, None] / 255
    img = Image.frombytes("P", (w, h), np.ascontiguousarray(idx, dtype=np.uint8).tobytes())
    img.putpalette(palette.astype(np.uint8).tobytes())
    return kind, img.convert("RGB")


def _draw_objects(rng: np.random.Generator, img: Image.Image) -> list[dict]:
    draw, (w, h), objects = ImageDraw.Draw(img), img.size, []
    for _ in range(int(rng.integers(1, 5))):
        shape, colour = _pick(rng, SHAPES), _pick(rng, list(COLOURS))
        r = max(4.0, rng.uniform(0.08, 0.25) * min(w, h))
        cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
        if shape in ("circle", "ellipse"):
            ry = r if shape == "circle" else r * rng.uniform(0.4, 0.75)
            box = (cx - r, cy - ry, cx + r, cy + ry)
            draw.ellipse(box, fill=COLOURS[colour])
        else:
            n, rot = {"triangle": (3, rng.uniform(0, 2 * np.pi)), "square": (4, np.pi / 4), "diamond": (4, 0.0),
                      "star": (10, -np.pi / 2)}[shape]
            ang = rot + np.arange(n) * 2 * np.pi / n
            rad = np.where(np.arange(n) % 2 == 0, r, r * 0.45) if shape == "star" else np.full(n, r)
            pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], axis=1)
            draw.polygon([tuple(p) for p in pts.tolist()], fill=COLOURS[colour])
            box = (*pts.min(axis=0), *pts.max(axis=0))
        bbox = [int(np.clip(v, 0, lim)) for v, lim in zip(box, (w, h, w, h))]
        objects.append({"shape": shape, "colour": colour, "bbox": bbox})
    return objects


def _english(rng: np.random.Generator, objects: list[dict], background: str) -> str:
    phrases = [f"{'an' if o['colour'][0] in 'aeiou' else 'a'} {o['colour']} {o['shape']}" for o in objects]
    text = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    bg = _pick(rng, (f" on a {background} background", f" against a {background} background", ""))
    return _pick(rng, PREFIXES) + text + bg


def _caption(rng: np.random.Generator, objects: list[dict], background: str) -> str:
    """Scene caption with web noise: ~3% empty, ~4% very short, ~8% non-English, else noisy English."""
    u, n = rng.random(), int(rng.integers(100000, 1000000))
    if u < 0.03:
        return ""
    if u < 0.07:
        return _pick(rng, SHORT).format(n=n % 100000)
    if u < 0.15:
        template, joiner, names = FOREIGN[_pick(rng, list(FOREIGN))]
        return template.format(joiner.join(names[SHAPES.index(o["shape"])] for o in objects))
    c = _english(rng, objects, background)
    words = c.split(" ")
    if rng.random() < 0.12:  # misspelling: swap two adjacent letters or drop one
        long_words = [i for i, wd in enumerate(words) if len(wd) >= 4 and wd.isalpha()]
        if long_words:
            i = _pick(rng, long_words)
            wd, j = words[i], int(rng.integers(0, len(words[i]) - 1))
            words[i] = wd[:j] + wd[j + 1] + wd[j] + wd[j + 2:] if rng.random() < 0.5 else wd[:j] + wd[j + 1:]
    if rng.random() < 0.10:  # repeated word ("the the")
        i = int(rng.integers(0, len(words)))
        words.insert(i, words[i])
    c = " ".join(words)
    if rng.random() < 0.06:
        c = c.replace(" and ", " &amp; ", 1) if " and " in c and rng.random() < 0.5 else _pick(rng, HTML).format(c=c)
    if rng.random() < 0.15:
        c = _pick(rng, BOILERPLATE).format(c=c, n=n)
    if rng.random() < 0.07:
        c = c.upper() if rng.random() < 0.6 else c.title()
    if rng.random() < 0.08:
        c = c.replace(" ", "  ") if rng.random() < 0.3 else _pick(rng, SPACES).format(c=c)
    return c


def make_sample(index: int, seed: int = 0) -> dict:
    """Sample ``index`` of the corpus: ext, image bytes, width, height, caption, and the scene that was drawn."""
    rng = np.random.default_rng([seed, index])
    ext, pil_format, options = _pick(rng, FORMATS, p=FORMAT_P)
    w, h = _size(rng)
    background, img = _background(rng, w, h)
    objects = _draw_objects(rng, img)
    buf = io.BytesIO()
    img.save(buf, pil_format, **options)
    return {"ext": ext, "image": buf.getvalue(), "width": w, "height": h,
            "caption": _caption(rng, objects, background), "scene": {"background": background, "objects": objects}}


def _shard_ranges(num_samples: int, shards: int) -> list[range]:
    base, extra = divmod(num_samples, shards)
    starts = np.cumsum([0] + [base + (s < extra) for s in range(shards)]).tolist()
    return [range(starts[s], starts[s + 1]) for s in range(shards)]


def _tar_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
    return info, io.BytesIO(data)


def write_sample_corpus(out: str, num_samples: int, shards: int, fmt: Literal["webdataset", "parquet"],
                        seed: int = 0) -> list[str]:
    """Write ``num_samples`` synthetic samples over ``shards`` shards (contiguous, as even as possible) into the
    local directory ``out`` (created); return the shard paths. Shards beyond ``num_samples`` are written empty.

    webdataset: ``{shard:05d}.tar`` with ``{key}.{jpg|png|webp}``, ``{key}.txt``, ``{key}.json`` per sample.
    parquet: ``{shard:05d}.parquet`` with columns key (string), jpg (binary, any image format), txt (string).
    Keys are img2dataset's: shard id (5 digits) + index in shard (4 digits, wider if a shard holds more than 10000).
    """
    if fmt not in ("webdataset", "parquet"):
        raise ValueError(f"fmt must be 'webdataset' or 'parquet', not {fmt!r}")
    if num_samples < 0 or shards < 1 or seed < 0:
        raise ValueError("need num_samples >= 0, shards >= 1 and seed >= 0")
    if "://" in out:
        raise ValueError(f"sample data is written to a local directory only, not {out!r}")
    os.makedirs(out, exist_ok=True)
    ranges = _shard_ranges(num_samples, shards)
    width = max(4, len(str(max(len(r) for r in ranges) - 1)))
    paths = []
    for shard, indices in enumerate(ranges):
        keys = [f"{shard:05d}{j:0{width}d}" for j in range(len(indices))]
        samples = [make_sample(i, seed) for i in indices]
        if fmt == "parquet":
            path = os.path.join(out, f"{shard:05d}.parquet")
            columns = {"key": keys, "jpg": [s["image"] for s in samples], "txt": [s["caption"] for s in samples]}
            table = pa.table(columns, schema=PARQUET_SCHEMA)
            pq.write_table(table, path, row_group_size=PARQUET_ROW_GROUP, write_statistics=["key", "txt"])
        else:
            path = os.path.join(out, f"{shard:05d}.tar")
            members = []
            for key, s in zip(keys, samples):
                meta = {"url": f"https://example.com/img/{key}.{s['ext']}", "key": key, "status": "success",
                        "error_message": None, "width": s["width"], "height": s["height"],
                        "original_width": s["width"], "original_height": s["height"], "exif": None,
                        "sha256": hashlib.sha256(s["image"]).hexdigest(), "caption": s["caption"], "scene": s["scene"]}
                members += [(f"{key}.{s['ext']}", s["image"]), (f"{key}.txt", s["caption"].encode("utf-8")),
                            (f"{key}.json", json.dumps(meta).encode("utf-8"))]
            with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
                for name, data in sorted(members):
                    tar.addfile(*_tar_member(name, data))
        paths.append(path)
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``djray sample-data OUT --num-samples N --shards K --format webdataset|parquet [--seed S]``."""
    parser.add_argument("out", help="local output directory (created)")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--format", dest="fmt", choices=("webdataset", "parquet"), default="webdataset")
    parser.add_argument("--seed", type=int, default=0)


def main(args: argparse.Namespace) -> int:
    paths = write_sample_corpus(args.out, args.num_samples, args.shards, args.fmt, args.seed)
    print(f"wrote {args.num_samples} samples in {len(paths)} {args.fmt} shards to {args.out}")
    return 0
