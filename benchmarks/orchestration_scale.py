"""Orchestration cost per shard: many tiny shards on local disk, no model, so what is measured is djray's own
bookkeeping — the driver's CPU seconds per shard in each phase — and the start-up of a resume where every shard is
already done (the whole `djray run` process, Ray start included; target <= 30 s at 10,000 shards).

Each shard is a tar of `--rows-per-shard` small JPEG samples. Driver CPU is `time.process_time()` of the driver
process around each phase (all its threads, Ray's client threads included).

    python benchmarks/orchestration_scale.py [--shards 1000 10000] [--rows-per-shard 2]
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def write_tiny_shards(root: Path, shards: int, rows: int) -> None:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.new("RGB", (48, 40), (90, 140, 30)).save(buf, "JPEG")
    jpg = buf.getvalue()
    for s in range(shards):
        with tarfile.open(root / f"{s:06d}.tar", "w") as tar:
            for i in range(rows):
                for ext, data in (("jpg", jpg), ("txt", f"tiny sample {s} {i}".encode())):
                    info = tarfile.TarInfo(f"{s:06d}{i:03d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


RESUME = ("import resource, sys; from djray.cli import main; rc = main(['run', sys.argv[1], '--no-progress']); "
          "print('peak_rss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")


def run_in_process(config: Path) -> dict:
    """One `djray run` in this process with each phase's driver CPU measured."""
    import ray

    from djray import pipeline
    from djray.config import load_config

    cpu: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*a, **kw):
            t0 = time.process_time()
            try:
                return fn(*a, **kw)
            finally:
                cpu[name] = cpu.get(name, 0.0) + time.process_time() - t0
        return wrapper

    for name in ("_phase_a", "_phase_b", "_phase_c", "_manifest"):
        setattr(pipeline, name, timed(name.strip("_"), getattr(pipeline, name)))
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    manifest = pipeline.run(load_config(config), progress=False, log=lambda m: None)
    wall = time.perf_counter() - t0
    total_cpu = time.process_time() - cpu0
    ray.shutdown()
    assert manifest["status"] == "complete", manifest.get("error")
    return {"wall_s": wall, "driver_cpu_s": total_cpu, "cpu": cpu, "phases_s": manifest["run"]["phases_s"],
            "rows": manifest["rows_in"], "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, nargs="+", default=[1000, 10_000])
    ap.add_argument("--rows-per-shard", type=int, default=2)
    ap.add_argument("--in-process", metavar="CONFIG", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.in_process:
        import json

        print(json.dumps(run_in_process(Path(args.in_process))))
        return 0
    import json

    base = Path(tempfile.mkdtemp(prefix="djray-orch-bench-"))
    results = {}
    try:
        for shards in args.shards:
            corpus, out = base / f"corpus-{shards}", base / f"out-{shards}"
            write_tiny_shards(corpus, shards, args.rows_per_shard)
            config = base / f"job-{shards}.yaml"
            config.write_text(f"input: {{path: {corpus}, format: webdataset}}\noutput: {{path: {out}}}\n"
                              f"sieve: [{{op: exact_dedup}}, {{op: random, keep_fraction: 0.5}}]\n")
            first = subprocess.run([sys.executable, __file__, "--in-process", str(config)], check=True,
                                   capture_output=True, text=True)
            r = json.loads(first.stdout.strip().splitlines()[-1])
            t0 = time.perf_counter()  # the resume: a whole `djray run` process with nothing to do
            resume = subprocess.run([sys.executable, "-c", RESUME, str(config)], check=True, capture_output=True,
                                    text=True)
            r["resume_s"] = time.perf_counter() - t0
            r["resume_rss_mb"] = int(resume.stdout.strip().splitlines()[-1].split()[-1]) / 1024
            results[shards] = r
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(corpus, ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    print(f"\n{args.rows_per_shard} rows per shard, no model, {os.cpu_count()} CPUs; driver CPU ms per shard by phase")
    print(f"{'shards':>8} {'wall s':>8} {'A ms':>7} {'B ms':>7} {'C ms':>7} {'manifest':>8} {'driver MB':>9} "
          f"{'resume s':>9}")
    for shards, r in results.items():
        c = {k: 1000 * v / shards for k, v in r["cpu"].items()}
        print(f"{shards:>8,} {r['wall_s']:>8.1f} {c.get('phase_a', 0):>7.2f} {c.get('phase_b', 0):>7.2f} "
              f"{c.get('phase_c', 0):>7.2f} {c.get('manifest', 0):>8.2f} {r['driver_peak_rss_mb']:>9.0f} "
              f"{r['resume_s']:>9.1f}")
    for shards, r in results.items():
        per = " ".join(f"{k}_cpu_ms_per_shard={1000 * v / shards:.3f}" for k, v in sorted(r["cpu"].items()))
        print(f"BENCH name=orchestration rows={r['rows']} shards={shards} wall_s={r['wall_s']:.2f} "
              f"peak_rss_mb={r['driver_peak_rss_mb']:.0f} driver_cpu_s={r['driver_cpu_s']:.2f} {per}")
        print(f"BENCH name=orchestration_resume_all_done rows={r['rows']} shards={shards} wall_s={r['resume_s']:.2f} "
              f"peak_rss_mb={r['resume_rss_mb']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
