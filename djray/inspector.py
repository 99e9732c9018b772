"""`djray inspect OUTPUT --key K`: one governed (or rejected) row, for the terminal.

Prints where the row is, the caption before and after governance (and how it was made), the visual evidence, the
kept patches as a grid of characters over the canonical crop, the CLIP score and, for a rejected row, the stage,
reason and detail. Reads data/ then rejects/ with a filter on `key` and never the image bytes: it scans the key
column of every file (at LAION-400M, a few GB of keys); `--shard` reads one file.
"""

from __future__ import annotations

from typing import Any

import pyarrow.compute as pc
import pyarrow.dataset as pads

from djray import schema as S
from djray.io import fs as iofs
from djray.runtime.layout import Layout

KEPT, DROPPED = "#", "."


def find_row(output: str, key: str, shard: str | None = None,
             storage: iofs.Storage | None = None) -> tuple[str, dict[str, Any]] | None:
    """("data" | "rejects", row without the image bytes) for `key`, or None when neither holds it."""
    fs, root = iofs.resolve(output, storage or iofs.Storage())
    layout = Layout(root)
    for kind in ("data", "rejects"):
        where = getattr(layout, kind)(shard) if shard else f"{root}/{kind}"  # the shard's file, named as written
        try:
            dataset = pads.dataset(where, format="parquet", filesystem=fs)
        except (FileNotFoundError, OSError):
            continue
        columns = [n for n in dataset.schema.names if n != S.IMAGE]
        table = dataset.to_table(columns=columns, filter=pc.field(S.KEY) == key)
        if table.num_rows:
            return kind, table.slice(0, 1).to_pylist()[0]
    return None


def patch_grid(patch_idx: list[int] | None, grid_h: int | None, grid_w: int | None) -> list[str]:
    """One string per patch row: KEPT where the patch is in `patch_idx` (row-major), DROPPED elsewhere."""
    if patch_idx is None or not grid_h or not grid_w:
        return []
    kept = set(patch_idx)
    return ["".join(KEPT if r * grid_w + c in kept else DROPPED for c in range(grid_w)) for r in range(grid_h)]


def shorten(labels: list[str], most: int = 12) -> str:
    more = f" (+{len(labels) - most} more)" if len(labels) > most else ""
    return ", ".join(labels[:most]) + more


def format_row(kind: str, row: dict[str, Any]) -> str:
    lines = [f"key       {row[S.KEY]}",
             f"source    {row[S.SRC_SHARD]} #{row[S.SRC_INDEX]}   image {row.get(S.IMG_WIDTH)}x{row.get(S.IMG_HEIGHT)}"
             f"  sha256 {(row.get(S.IMG_SHA256) or '-')[:16]}"]
    if kind == "rejects":
        lines.append(f"REJECTED  stage {row[S.STAGE]}: {row[S.REASON]}" + (f" ({row[S.DETAIL]})" if row.get(S.DETAIL)
                                                                          else ""))
    else:
        lines.append("kept      in data/")
    lines.append(f"caption   raw       {row.get(S.CAPTION_RAW)!r}")
    if row.get(S.CAPTION) is not None or kind == "data":
        lines.append(f"          governed  {row.get(S.CAPTION)!r}  ({row.get(S.CAPTION_SOURCE)})")
    if row.get(S.VIS_CLASSES):
        evidence = set(row.get(S.VIS_EVIDENCE) or [])
        shown = ", ".join(f"{c['label']} {c['prob']:.2f}{' *' if c['label'] in evidence else ''}"
                          for c in row[S.VIS_CLASSES])
        lines.append(f"classes   {shown}   (* = evidence)")
    if S.VIS_EVIDENCE in row:
        lines.append(f"evidence  {shorten(row[S.VIS_EVIDENCE] or []) or '(none)'}")
    grid = patch_grid(row.get(S.PATCH_IDX), row.get(S.GRID_H), row.get(S.GRID_W))
    if grid:
        total = row[S.GRID_H] * row[S.GRID_W]
        lines.append(f"patches   {len(row[S.PATCH_IDX])}/{total} kept ({row[S.GRID_H]}x{row[S.GRID_W]} grid of "
                     f"{row[S.PATCH_SIZE]}px patches; {KEPT} kept, {DROPPED} dropped)")
        lines += [f"          {g}" for g in grid]
    if row.get(S.CLIP_SCORE) is not None:
        lines.append(f"clip      score {row[S.CLIP_SCORE]:.4f}")
    published = {k: v for k, v in row.items() if k in S.PUBLISHED_FIELDS and v is not None}
    if published:
        lines.append("sieves    " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                             for k, v in published.items()))
    return "\n".join(lines)


def inspect_command(output: str, key: str, shard: str | None = None, endpoint_url: str | None = None) -> int:
    """Print the row; exit 0 when found, 1 when neither data/ nor rejects/ holds the key, 2 when OUTPUT is not
    readable."""
    import sys

    try:
        found = find_row(output, key, shard, iofs.Storage(endpoint_url=endpoint_url))
    except (ValueError, OSError) as e:
        print(f"djray: inspect: cannot read {output}: {e}", file=sys.stderr)
        return 2
    if found is None:
        print(f"djray: no row with key {key!r} in {output}/data or {output}/rejects", file=sys.stderr)
        return 1
    print(format_row(*found))
    return 0
