"""Cost of the remaining governors, in process, one measurement per fresh child process (its peak RSS is the
measurement's): VAS with a fixed S and VAS-D, InfoGrowth's online gain (items/s, and HNSW recall against an exact
kNN on the same order), D2Pruning exact and partitioned.

Each measurement runs the sieve's own code on synthetic clustered unit embeddings (`decide`: fit, score/select,
details, published columns) — the work one phase-B task does; the runtime around it is measured by
`benchmarks/sieve_scale.py`.

    python benchmarks/governors_scale.py [--vas 100000,300000] [--vasd 100000] [--gain 10000,30000]
                                         [--recall 10000] [--d2 20000,50000] [--d2-part 200000]
                                         [--vas-runtime 1000000]   # VAS fixed S through the Ray runtime
                                         [--d2-runtime 1000000]    # D2Pruning partition: cluster, Ray runtime

Sizes the issue asks for, one mode per invocation (each ~5-10 min on 2 cores): `--gain 1000000 --vas "" --vasd ""
--recall "" --d2 "" --d2-part ""` (InfoGrowth, one instance), `--vasd 1000000 ...` (VAS-D, 100 iterations),
`--d2-runtime 1000000 ...` with every in-process size empty.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic_signals import _list_column  # noqa: E402

from djray import schema as S  # noqa: E402
from djray.ops.sieve import build_sieve  # noqa: E402
from djray.ops.sieve.inprocess import decide, with_runtime_columns  # noqa: E402


def pool(n: int, d: int, seed: int = 0, text: bool = False) -> pa.Table:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((200, d), np.float32)
    cols = {S.KEY: pa.array([f"{i:010d}" for i in range(n)])}
    for name in (S.CLIP_IMAGE_EMBEDDING,) + ((S.CLIP_TEXT_EMBEDDING,) if text else ()):
        x = c[rng.integers(0, 200, n)] + 0.5 * rng.standard_normal((n, d), np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        cols[name] = _list_column(x)
    cols[S.CLIP_SCORE] = pa.array(np.round(rng.random(n) * 0.4, 4).astype(np.float32))
    return with_runtime_columns(pa.table(cols))


def _child(kind: str, n: int, d: int, q) -> None:
    table = pool(n, d, text=kind in ("gain", "recall", "d2", "d2_part"))
    if kind == "vas":
        from djray.ops.sieve.vas import VasParams, write_reference

        path = tempfile.mktemp(suffix=".parquet")
        write_reference(path, np.random.default_rng(1).standard_normal((50_000, d)), "ViT-L-14")
        params = VasParams(clip_fraction=0.3, vas_fraction=0.2, target={"kind": "reference", "path": path,
                                                                         "model": "ViT-L-14"})
    elif kind == "vasd":
        from djray.ops.sieve.vas import VasParams

        params = VasParams(clip_fraction=0.3, vas_fraction=0.2, target={"kind": "pool", "iterations": 100})
    elif kind in ("gain", "recall"):
        from djray.ops.sieve.infogrowth import GainParams

        params = GainParams()
    elif kind == "d2":
        from djray.ops.sieve.d2pruning import D2PruningParams

        params = D2PruningParams(keep_fraction=0.3, features="image")
    else:
        from djray.ops.sieve.d2pruning import D2PruningParams

        params = D2PruningParams(keep_fraction=0.3, features="image", partition="cluster", n_clusters=100,
                                 sample_per_centroid=100)
    sieve = build_sieve(params)
    t0 = time.perf_counter()
    d_ = decide(sieve, table)
    wall = time.perf_counter() - t0
    extra = {"kept": int(np.asarray(d_.keep).sum())}
    if kind == "recall":
        extra["agree"] = _agreement(table, np.array(d_.columns["gain_raw"].to_pylist()), params)
    q.put((wall, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10, extra))


def _agreement(table: pa.Table, got: np.ndarray, params) -> float:
    """Share of rows whose HNSW gain equals the gain from an exact kNN over the same order (blocked brute force)."""
    from djray.ops.sieve import kmeans as K
    from djray.ops.sieve.base import hash_order

    order = hash_order(params.seed, table.column(S.KEY).to_pylist())
    xs = [K.unit_rows(table, c)[order].astype(np.float32) for c in (S.CLIP_IMAGE_EMBEDDING, S.CLIP_TEXT_EMBEDDING)]
    n, k = len(order), params.k
    exact = np.ones(n)
    block = 1024
    for b0 in range(0, n, block):
        b1 = min(n, b0 + block)
        parts = []
        for x in xs:
            dist = 1.0 - x[b0:b1] @ x[:b1].T
            dist[np.arange(b1 - b0)[:, None] + b0 <= np.arange(b1)[None, :]] = np.inf  # only earlier rows
            dist.sort(axis=1)
            parts.append(dist[:, :k])
        for j in range(b1 - b0):
            t = b0 + j
            if t:
                kk = min(t, k)
                exact[t] = (parts[0][j, :kk].mean() + parts[1][j, :kk].mean()) / 2
    ref = np.empty(n)
    ref[order] = exact
    return float((np.abs(got - ref) < 1e-4).mean())


def _signals_store(root: str, rows: int, d: int) -> list[str]:
    """A signals store of shards of 10,000 rows: clustered unit `clip_image_embedding` (d) and clip_score."""
    import os

    import pyarrow.parquet as pq

    from djray.runtime.layout import Layout

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((200, d), np.float32)
    names = [f"shard-{i:05d}.tar" for i in range((rows + 9999) // 10000)]
    for i, name in enumerate(names):
        n = min(10000, rows - i * 10000)
        x = centres[rng.integers(0, 200, n)] + 0.5 * rng.standard_normal((n, d), np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        path = Layout(root).signals(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pq.write_table(pa.table({
            S.KEY: [f"{i * 10000 + j:010d}" for j in range(n)], S.SRC_SHARD: [name] * n,
            S.SRC_INDEX: np.arange(n, dtype=np.int64), S.STAGE: pa.nulls(n, pa.string()),
            S.REASON: pa.nulls(n, pa.string()), S.DETAIL: pa.nulls(n, pa.string()),
            S.CLIP_IMAGE_EMBEDDING: _list_column(x),
            S.CLIP_SCORE: pa.array(np.round(rng.random(n) * 0.4, 4).astype(np.float32))}), path)
    return names


def _runtime(kind: str, rows: int, d: int, cpus: int) -> str:
    """One selection step through the phase-B runtime (a local Ray instance, shards of 10,000 rows); RSS = the
    largest Ray worker (sampled every 0.1 s) and the driver.

    vas: VAS with a fixed S — the scan for the CLIP cut, map tasks scoring f S f, the exact top-n gather, decisions.
    d2:  D2Pruning `partition: cluster` (100 clusters, image features) — a sampled k-means fit, map tasks assigning
         clusters, reduce tasks each running the graphs of their clusters, writer tasks."""
    import os
    import shutil

    import ray
    from sieve_scale import PeakRss
    from synthetic_signals import selection_context

    from djray.ops.sieve import expand_steps
    from djray.runtime.select import run_selection

    root = tempfile.mkdtemp(prefix=f"{kind}-runtime-")
    t_gen = time.perf_counter()
    names = _signals_store(root, rows, d)
    gen_s = time.perf_counter() - t_gen
    if kind == "vas":
        from djray.ops.sieve.vas import VasParams, write_reference

        ref = os.path.join(root, "reference.parquet")
        write_reference(ref, np.random.default_rng(1).standard_normal((50_000, d)), "ViT-L-14")
        params = VasParams(clip_fraction=0.3, vas_fraction=0.2,
                           target={"kind": "reference", "path": ref, "model": "ViT-L-14"})
        name = "vas_fixed_s_runtime"
    else:
        from djray.ops.sieve.d2pruning import D2PruningParams

        params = D2PruningParams(keep_fraction=0.3, features="image", partition="cluster", n_clusters=100,
                                 sample_per_centroid=100)
        name = "d2pruning_partitioned_runtime"
    steps = expand_steps([params])
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="ERROR")
    try:
        with PeakRss() as peak:
            t0 = time.perf_counter()
            records = run_selection(selection_context(root, names, steps), steps, lambda: rows,
                                    lambda: {S.CLIP_IMAGE_EMBEDDING: 4.0 * d, S.CLIP_SCORE: 4.0}, cpus)
            wall = time.perf_counter() - t0
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    last = records[-1]
    tasks = " ".join(f"{k}_tasks={v}" for k, v in last.get("tasks", {}).items())
    return (f"BENCH name={name} rows={rows} wall_s={wall:.2f} peak_rss_mb={peak.worker >> 20} "
            f"driver_rss_mb={peak.driver >> 20} dim={d} cpus={cpus} kept={last['kept']} {tasks} gen_s={gen_s:.1f}")


def measure(kind: str, n: int, d: int) -> tuple[float, int, dict]:
    q = mp.get_context("fork").Queue()
    p = mp.get_context("fork").Process(target=_child, args=(kind, n, d, q))
    p.start()
    out = q.get()
    p.join()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vas", default="100000,300000")
    ap.add_argument("--vas-dim", type=int, default=768)
    ap.add_argument("--vasd", default="100000")
    ap.add_argument("--gain", default="10000,30000")
    ap.add_argument("--gain-dim", type=int, default=256)
    ap.add_argument("--recall", default="10000")
    ap.add_argument("--d2", default="20000,50000")
    ap.add_argument("--d2-part", default="200000")
    ap.add_argument("--d2-dim", type=int, default=512)
    ap.add_argument("--vas-runtime", default="", help="sizes for VAS (fixed S) through the Ray runtime")
    ap.add_argument("--d2-runtime", default="", help="sizes for D2Pruning partition: cluster through the Ray runtime")
    ap.add_argument("--cpus", type=int, default=2)
    args = ap.parse_args()
    for kind, sizes, d in (("vas", args.vas_runtime, args.vas_dim), ("d2", args.d2_runtime, args.d2_dim)):
        for n in [int(s) for s in sizes.split(",") if s]:
            print(_runtime(kind, n, d, args.cpus), flush=True)
    plan = [("vas", args.vas, args.vas_dim), ("vasd", args.vasd, args.vas_dim), ("gain", args.gain, args.gain_dim),
            ("recall", args.recall, args.gain_dim), ("d2", args.d2, args.d2_dim), ("d2_part", args.d2_part, args.d2_dim)]
    names = {"vas": "vas_fixed_s", "vasd": "vas_d_100it", "gain": "infogrowth_gain", "recall": "infogrowth_recall",
             "d2": "d2pruning_exact", "d2_part": "d2pruning_partitioned"}
    lines, walls = [], {}
    for kind, sizes, d in plan:
        for n in [int(s) for s in sizes.split(",") if s]:
            wall, rss, extra = measure(kind, n, d)
            walls.setdefault(kind, []).append((n, wall))
            more = " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items())
            rate = f" items_per_s={n / wall:.0f}" if kind in ("gain", "recall") else ""
            lines.append(f"BENCH name={names[kind]} rows={n} wall_s={wall:.2f} peak_rss_mb={rss} dim={d}{rate} {more}")
            print(lines[-1], flush=True)
    for kind, got in walls.items():
        if len(got) > 1:
            (r0, w0), (r1, w1) = got[0], got[-1]
            print(f"{names[kind]}: {r1 / r0:.1f}x rows -> {w1 / w0:.1f}x wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
