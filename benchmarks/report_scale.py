"""`djray report` at scale: a synthetic output of N rows (signals with 14×14 patch scores, evidence classes, k-means
clusters and clip_score; data/ with kept patch indices and captions; a manifest), reported at two sizes, each in a fresh
process — wall time and that process's peak RSS, to show the report's memory does not grow with the output.

    python benchmarks/report_scale.py [--rows 100000 1000000] [--keep DIR]

The store is written by benchmarks/synthetic_signals.py (keys, shas, 1 % phase-A rejects, clip_score) plus the columns
the report reads; data/ rows carry one small JPEG each (the sampled images must decode).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_signals import write_signals_store  # noqa: E402

from djray import schema as S  # noqa: E402
from djray.runtime.layout import Layout  # noqa: E402

SHARD_ROWS, GRID, PATCH, CLASSES, CLUSTERS = 10_000, 14, 16, 1000, 500


def _jpeg(seed: int) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), np.uint8).repeat(40, 0).repeat(40, 1)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=80)
    return buf.getvalue()


def _lists(values: np.ndarray, lengths: np.ndarray, typ: pa.DataType) -> pa.Array:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, typ))


def augment(root: str, name: str, seed: int, image: bytes) -> dict:
    """Add the report's columns to one synthetic signals shard; write its data/ file; return its manifest record."""
    layout, rng = Layout(root), np.random.default_rng(seed)
    sig = pq.read_table(layout.signals(name))
    n, m = sig.num_rows, GRID * GRID
    scores = rng.dirichlet(np.full(m, 0.5), n).astype(np.float32)
    n_ev = rng.integers(0, 4, n)
    labels = np.array([f"class {i:03d}" for i in range(CLASSES)])
    ev = labels[np.minimum(rng.zipf(1.6, n_ev.sum()) - 1, CLASSES - 1)]
    sig = sig.drop_columns([S.VIS_EMBEDDING]).append_column(S.PATCH_SCORES, _lists(scores.ravel(), np.full(n, m),
                                                                                     pa.float32()))
    sig = sig.append_column(S.VIS_EVIDENCE, _lists(ev, n_ev, pa.string()))
    sig = sig.append_column("cluster_id", pa.array(rng.integers(0, CLUSTERS, n).astype(np.int32)))
    for c, v in ((S.PATCH_SIZE, PATCH), (S.GRID_H, GRID), (S.GRID_W, GRID)):
        sig = sig.append_column(c, pa.array(np.full(n, v, np.int16)))
    pq.write_table(sig, layout.signals(name), compression="zstd")
    alive = sig.filter(pc.is_null(sig.column(S.REASON)))
    k = alive.num_rows
    keep = np.sort(np.argsort(-scores[: k], axis=1)[:, : m // 2], axis=1).astype(np.int16)
    caption_raw = [f"  a photo of thing {i % 97} on a table &amp; more  " for i in range(k)]
    data = alive.select([S.KEY, S.SRC_SHARD, S.SRC_INDEX, S.PATCH_SIZE, S.GRID_H, S.GRID_W, S.CLIP_SCORE])
    data = data.append_column(S.IMAGE, pa.array([image] * k, pa.binary()))
    data = data.append_column(S.PATCH_IDX, _lists(keep.ravel(), np.full(k, m // 2), pa.int16()))
    data = data.append_column(S.CAPTION_RAW, pa.array(caption_raw))
    data = data.append_column(S.CAPTION, pa.array([" ".join(c.replace("&amp;", "&").split()) for c in caption_raw]))
    data = data.append_column(S.CAPTION_SOURCE, pa.array(["normalized"] * k))
    path = layout.data(name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(data, path, compression={c: ("none" if c == S.IMAGE else "zstd") for c in data.column_names},
                   row_group_size=1024)
    return {"shard": name, "status": "done", "rows_in": n, "rows_kept": k, "rows_rejected": n - k,
            "rejected_by_reason": {"corrupt_image": n - k} if n - k else {}}


def build(root: str, rows: int) -> None:
    names = write_signals_store(root, rows, dim=8, shard_rows=SHARD_ROWS)
    image = _jpeg(0)
    with ThreadPoolExecutor(2) as pool:
        shards = list(pool.map(lambda i: augment(root, names[i], i, image), range(len(names))))
    kept = sum(s["rows_kept"] for s in shards)
    manifest = {"schema_version": S.SCHEMA_VERSION, "djray_version": "bench", "status": "complete", "config": {},
                "config_sha256": "0" * 64, "models": {}, "rows_in": rows, "rows_kept": kept,
                "rows_rejected": rows - kept, "rejected_by_reason": {"corrupt_image": rows - kept},
                "rejected_by_stage": {"decode": rows - kept}, "selection": [], "caption_source": {"normalized": kept},
                "accounting_ok": True, "shards_total": len(shards), "shards_done": len(shards), "shards": shards,
                "run": {"phases_s": {}}}
    Path(Layout(root).manifest).write_text(json.dumps(manifest))


def report_once(root: str, samples: int) -> None:
    """Child process: write the report, print wall and this process's peak RSS as JSON."""
    from djray.report import write_report

    t = time.perf_counter()
    path = write_report(root, os.path.join(root, "report.html"), samples=samples)
    wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"wall_s": wall, "peak_rss_mb": peak, "html_mb": os.path.getsize(path) / 1e6}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--keep", default=None, help="build the stores under this directory and keep them")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return report_once(args.child, args.samples)
    base = args.keep or tempfile.mkdtemp(prefix="djray-report-bench-")
    results = []
    try:
        for rows in args.rows:
            root = os.path.join(base, f"out-{rows}")
            if not os.path.exists(Layout(root).manifest):
                t = time.perf_counter()
                build(root, rows)
                print(f"built {rows:,} rows in {time.perf_counter() - t:.1f}s", file=sys.stderr)
            out = subprocess.run([sys.executable, __file__, "--child", root, "--samples", str(args.samples)],
                                 check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            results.append((rows, r))
            print(f"BENCH name=report rows={rows} wall_s={r['wall_s']:.2f} peak_rss_mb={r['peak_rss_mb']:.0f} "
                  f"samples={args.samples} html_mb={r['html_mb']:.2f} rows_per_s={rows / r['wall_s']:.0f}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    if len(results) >= 2:
        (r0, a), (r1, b) = results[0], results[-1]
        print(f"ratios {r1 // r0}x rows: wall x{b['wall_s'] / a['wall_s']:.2f}, "
              f"peak RSS x{b['peak_rss_mb'] / a['peak_rss_mb']:.2f}")


if __name__ == "__main__":
    main()
