"""Everything the report shows as a picture, as `data:` URIs (the page needs no other file): matplotlib plots (Agg,
PNG), sample images on the canonical crop with the dropped patches greyed out (paper Fig. 6), and thumbnails."""

from __future__ import annotations

import base64
import io
from collections import Counter

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from djray.geometry import ImageRejected, canonical_crop, open_image  # noqa: E402

MAX_PIXELS = 89_478_485  # decode limit for report thumbnails (djray's default decode.max_pixels)
THUMB = 224  # px: side of a thumbnail in the page
GREY = np.array([128, 128, 128], np.float32)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _png(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    return data_uri(buf.getvalue(), "image/png")


def _axes(title: str, xlabel: str, ylabel: str = "rows") -> tuple[plt.Figure, plt.Axes]:
    fig, ax = plt.subplots(figsize=(4.6, 2.8))
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(labelsize=8)
    ax.ticklabel_format(useOffset=False, style="plain")
    ax.grid(axis="y", alpha=0.3)
    return fig, ax


def hist_plot(values: np.ndarray, title: str, xlabel: str, bins: int = 40) -> str:
    """Histogram of real values (a uniform sample when the statistic had more values than its reservoir)."""
    fig, ax = _axes(title, xlabel)
    ax.hist(values, bins=bins, color="#3b6ea5")
    ax.xaxis.set_major_locator(MaxNLocator(5))
    return _png(fig)


def count_plot(counts: Counter, title: str, xlabel: str, max_bars: int = 60, ylabel: str = "rows") -> str:
    """Bar chart of exact counts of integer values; binned into `max_bars` ranges when there are more values."""
    fig, ax = _axes(title, xlabel, ylabel)
    xs = np.array(sorted(counts), np.float64)
    ys = np.array([counts[k] for k in sorted(counts)], np.float64)
    if len(xs) <= max_bars and (len(xs) < 2 or xs[-1] - xs[0] <= 2 * max_bars):
        ax.bar(xs, ys, width=0.8, color="#3b6ea5")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(xs) == 1:
            ax.set_xlim(xs[0] - 5, xs[0] + 5)
    else:
        ax.hist(xs, bins=max_bars, weights=ys, color="#3b6ea5")
    return _png(fig)


def sizes_plot(sizes: np.ndarray, title: str) -> str:
    """How many clusters have each size (exact)."""
    return count_plot(Counter(sizes.tolist()), title, "rows in the cluster", ylabel="clusters")


def top_plot(counts: Counter, title: str, k: int = 20) -> str:
    top = counts.most_common(k)[::-1]
    fig, ax = plt.subplots(figsize=(4.6, 0.22 * len(top) + 0.9))
    ax.barh([str(label) for label, _ in top], [n for _, n in top], color="#5a8f4e")
    ax.set_title(title, fontsize=10)
    ax.tick_params(labelsize=8)
    ax.set_xlabel("images", fontsize=9)
    return _png(fig)


def funnel_plot(stages: list[tuple[str, int]]) -> str:
    """Rows left after each step, top to bottom in the order they ran."""
    fig, ax = plt.subplots(figsize=(6.2, 0.36 * len(stages) + 0.9))
    names = [n for n, _ in stages][::-1]
    rows = [r for _, r in stages][::-1]
    ax.barh(names, rows, color="#a5663b")
    for y, r in enumerate(rows):
        ax.text(r, y, f" {r:,}", va="center", fontsize=8)
    ax.set_title("rows left after each step", fontsize=10)
    ax.tick_params(labelsize=8)
    ax.set_xlim(0, max(rows + [1]) * 1.18)
    return _png(fig)


def _jpeg(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=85)
    return data_uri(buf.getvalue(), "image/jpeg")


def masked_crop(image: bytes, patch_size: int, grid_h: int, grid_w: int, kept: list[int]) -> str | None:
    """The canonical crop (what the scorer saw) with every patch not in `kept` blended to grey and a thin grid."""
    try:
        crop = canonical_crop(open_image(image, MAX_PIXELS), patch_size * grid_h).astype(np.float32)
    except ImageRejected:
        return None
    keep = np.zeros(grid_h * grid_w, bool)
    keep[[i for i in kept if 0 <= i < grid_h * grid_w]] = True
    mask = np.repeat(np.repeat(~keep.reshape(grid_h, grid_w), patch_size, 0), patch_size, 1)
    crop[mask] = 0.25 * crop[mask] + 0.75 * GREY
    crop[::patch_size, :] *= 0.85
    crop[:, ::patch_size] *= 0.85
    return _jpeg(crop.clip(0, 255).astype(np.uint8))


def thumbnail(image: bytes | None) -> str | None:
    """The image (display orientation) fitted into THUMB×THUMB, or None when it cannot be decoded."""
    if not image:
        return None
    try:
        img = open_image(image, MAX_PIXELS)
    except ImageRejected:
        return None
    img.thumbnail((THUMB, THUMB))
    return _jpeg(np.asarray(img))
