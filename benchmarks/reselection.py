"""Re-selection without the model: a juicing run (DINO ViT-S/16, random weights) on N images, then the same output
with another patch ratio and a `random` sieve. Both are whole `djray run` processes (Ray start and shutdown
included). Prints the wall-time ratio (target <= 0.15 on 2 cores), proof that no vision actor started during the
re-selection (the model record no actor rewrote, rows_processed 0), and the bytes djray's bookkeeping (`_djray/`)
held at its peak per row — with `--compare-old REV`, also for the runtime before the signals store (staging carried
the image bytes), from a checkout of REV run the same way.

    python benchmarks/reselection.py [--images 2000] [--compare-old 89e2bb1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from probes import PeakBytes

REPO = Path(__file__).resolve().parent.parent


RUN = ("import resource, sys; from djray.cli import main; rc = main(['run', sys.argv[1], '--no-progress']); "
       "print('peak_rss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")


def djray_run(config: Path, pythonpath: Path, watch: Path) -> tuple[float, int, float]:
    """(wall s, peak bytes under `watch`, driver peak RSS MB) of one whole `djray run` process."""
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    with PeakBytes(watch) as peak:
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", RUN, str(config)], check=True, env=env, capture_output=True,
                              text=True, cwd=watch.parent.parent)  # not the repo: `-c` puts the cwd on sys.path
        wall = time.perf_counter() - t0
    return wall, peak.peak, int(done.stdout.strip().splitlines()[-1].split()[-1]) / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--compare-old", default=None, metavar="REV", help="also measure the bookkeeping bytes of REV")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="djray-reselect-bench-"))
    try:
        corpus, out = base / "corpus", base / "out"
        subprocess.run([sys.executable, "-m", "djray", "sample-data", str(corpus), "--num-samples", str(args.images),
                        "--shards", str(args.shards), "--format", "webdataset"], check=True, capture_output=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
        vision = (f"{{model: vit_small_patch16_224.dino, weights: random, ratio: 0.5, precision: {args.precision}, "
                  "resources: {pool_size: 2, num_cpus: 0.5}}")
        first = base / "juice.yaml"
        first.write_text(f"input: {{path: {corpus}, format: webdataset}}\noutput: {{path: {out}}}\nvision: {vision}\n")
        second = base / "reselect.yaml"
        second.write_text(first.read_text().replace("ratio: 0.5", "ratio: 0.25")
                          + "sieve: [{op: random, keep_fraction: 0.5, seed: 1}]\n")
        t_first, peak_first, rss_first = djray_run(first, REPO, out / "_djray")
        record = out / "_djray" / "models" / "dino_patch.json"
        stamp = record.stat().st_mtime_ns
        t_second, _, rss_second = djray_run(second, REPO, out / "_djray")
        manifest = json.loads((out / "manifest.json").read_text())
        no_actor = record.stat().st_mtime_ns == stamp and manifest["run"]["rows_processed"] == 0
        signals_bytes = sum(f.stat().st_size for f in (out / "signals").glob("*.parquet"))
        old = None
        if args.compare_old:
            src = base / "old"
            src.mkdir()
            archive = subprocess.run(["git", "-C", str(REPO), "archive", args.compare_old], check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
            old_cfg = base / "old.yaml"
            old_cfg.write_text(first.read_text().replace(str(out), str(base / "out-old")))
            old = djray_run(old_cfg, src, base / "out-old" / "_djray")
    finally:
        shutil.rmtree(base, ignore_errors=True)

    n = args.images
    print(f"\n{n:,} images, ViT-S/16 random weights ({args.precision}), {os.cpu_count()} CPUs, whole processes")
    print(f"  juicing run                 {t_first:8.1f} s")
    print(f"  re-selection (ratio 0.25 + random 0.5)  {t_second:8.1f} s   ratio {t_second / t_first:.3f} "
          f"(target <= 0.15); no vision actor started: {no_actor}")
    print(f"  _djray/ at its peak         {peak_first / n:8.0f} bytes/row   (signals/ kept: {signals_bytes / n:.0f} "
          "bytes/row)")
    if old is not None:
        print(f"  _djray/ at its peak, {args.compare_old}  {old[1] / n:8.0f} bytes/row   (its juicing run "
              f"{old[0]:.1f} s)")
    print(f"BENCH name=juicing_run rows={n} wall_s={t_first:.2f} peak_rss_mb={rss_first:.0f} "
          f"djray_state_bytes_per_row={peak_first / n:.0f} signals_bytes_per_row={signals_bytes / n:.0f}")
    print(f"BENCH name=reselection rows={n} wall_s={t_second:.2f} peak_rss_mb={rss_second:.0f} ratio_to_first_run="
          f"{t_second / t_first:.3f} no_vision_actor={no_actor}")
    if old is not None:
        print(f"BENCH name=juicing_run_before_signals_store rows={n} wall_s={old[0]:.2f} peak_rss_mb={old[2]:.0f} "
              f"djray_state_bytes_per_row={old[1] / n:.0f} rev={args.compare_old}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
