"""Phase B at scale: [key_dedup, exact_dedup, random] over a synthetic signals store (384-d embeddings), on this
machine's CPUs, at two sizes — wall time, driver peak RSS and the largest task's peak RSS — to show how cost grows.

The store is written straight to disk (benchmarks/synthetic_signals.py: 1,000 rows per shard, 5 % planted exact
duplicates, 1 % phase-A rejects). Each size runs phase B in a fresh driver process (so its peak RSS is phase B's
own); Ray worker processes are sampled from /proc every 0.1 s for the task peak. `ray.init` is reported apart.

    python benchmarks/selection_scale.py [--rows 250000 1000000] [--keep-store DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from probes import WorkerRss

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parent))

ROWS_PER_SHARD = 1000


def phase_b(root: str, shards: int) -> dict:
    """Run in a fresh driver process: phase B over the store at `root`."""
    import ray

    from djray.ops.sieve.exact_dedup import ExactDedupParams
    from djray.ops.sieve.key_dedup import KeyDedupParams
    from djray.ops.sieve.random import RandomParams
    from djray.runtime.select import bytes_per_row, run_selection
    from synthetic_signals import selection_context

    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING")
    init_s = time.perf_counter() - t0
    params = [KeyDedupParams(), ExactDedupParams(), RandomParams(keep_fraction=0.5, seed=1)]
    names = json.loads(Path(root, "shards.json").read_text())
    ctx = selection_context(root, names, params)
    with WorkerRss() as workers:
        t0 = time.perf_counter()
        records = run_selection(ctx, params, lambda: shards * ROWS_PER_SHARD,
                                lambda: bytes_per_row(ctx.sig()[0], ctx.sig()[1].signals(names[0])),
                                int(ray.cluster_resources()["CPU"]))
        wall = time.perf_counter() - t0
    ray.shutdown()
    return {"wall_s": wall, "ray_init_s": init_s, "driver_peak_rss_mb": resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 1024, "task_peak_rss_mb": workers.peak / 1024,
        "steps": [{k: r[k] for k in ("op", "rows_in", "dropped", "tasks")} for r in records]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[250_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--keep-store", default=None, help="write the stores here and keep them")
    ap.add_argument("--phase-b", nargs=2, metavar=("ROOT", "SHARDS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase_b:
        print(json.dumps(phase_b(args.phase_b[0], int(args.phase_b[1]))))
        return 0
    from synthetic_signals import write_signals_store

    base = Path(args.keep_store or tempfile.mkdtemp(prefix="djray-select-bench-"))
    results = {}
    try:
        for rows in args.rows:
            root = base / f"store-{rows}"
            shards = rows // ROWS_PER_SHARD
            if not (root / "signals").exists():
                t0 = time.perf_counter()
                names = write_signals_store(str(root), rows, dim=args.dim, shard_rows=ROWS_PER_SHARD)
                (root / "shards.json").write_text(json.dumps(names))
                print(f"wrote {rows:,} rows in {shards:,} shards ({args.dim}-d) in {time.perf_counter() - t0:.1f}s",
                      flush=True)
            shutil.rmtree(root / "_djray", ignore_errors=True)
            out = subprocess.run([sys.executable, __file__, "--phase-b", str(root), str(shards)], check=True,
                                 capture_output=True, text=True)
            results[rows] = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        if not args.keep_store:
            shutil.rmtree(base, ignore_errors=True)

    print(f"\nphase B [key_dedup, exact_dedup, random 0.5] on {os.cpu_count()} CPUs, {args.dim}-d embeddings in store")
    print(f"{'rows':>10} {'wall s':>8} {'rows/s':>10} {'driver MB':>10} {'task MB':>8}  steps (rows_in → dropped)")
    for rows, r in results.items():
        steps = ", ".join(f"{s['op']} {s['rows_in']:,}→{s['dropped']:,}" for s in r["steps"])
        print(f"{rows:>10,} {r['wall_s']:>8.1f} {rows / r['wall_s']:>10,.0f} {r['driver_peak_rss_mb']:>10.0f} "
              f"{r['task_peak_rss_mb']:>8.0f}  {steps}")
    sizes = sorted(results)
    if len(sizes) >= 2:
        a, b = results[sizes[0]], results[sizes[-1]]
        print(f"{sizes[-1] / sizes[0]:.0f}x rows: wall x{b['wall_s'] / a['wall_s']:.2f} (target <= 4.5), driver RSS "
              f"x{b['driver_peak_rss_mb'] / a['driver_peak_rss_mb']:.2f} (target <= 1.3), task RSS "
              f"x{b['task_peak_rss_mb'] / a['task_peak_rss_mb']:.2f}")
    for rows, r in results.items():
        print(f"BENCH name=selection_exact_dedup_random rows={rows} wall_s={r['wall_s']:.2f} "
              f"peak_rss_mb={r['driver_peak_rss_mb']:.0f} task_peak_rss_mb={r['task_peak_rss_mb']:.0f} "
              f"ray_init_s={r['ray_init_s']:.2f} cpus={os.cpu_count()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
