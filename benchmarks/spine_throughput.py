"""Throughput of read → decode → write: djray on a local Ray instance vs a bare single-process loop.

Both sides do the same work on the same corpus and CPUs: read every tar member, decode every image fully with PIL
(the same `open_image` checks), apply the caption policy, and write one Parquet file of kept rows per shard.
Ray's own start-up (`ray.init`, ~3 s) is excluded; everything djray does per job (listing, staging, duplicate-key
pass, final write, manifest) is included. Prints rows/s for both and their ratio, measured in this one run.

    python benchmarks/spine_throughput.py [--samples 4000] [--shards 8] [--cpus N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from bench_corpus import read_tar_samples  # noqa: E402


def bare_loop(corpus: Path, out: Path, max_pixels: int = 89_478_485, min_side: int = 32) -> int:
    from djray.geometry import ImageRejected, open_image

    out.mkdir(parents=True, exist_ok=True)
    rows = 0
    for shard in sorted(corpus.glob("*.tar")):
        samples = read_tar_samples(shard)
        kept = []
        for index, (key, members) in enumerate(samples.items()):
            rows += 1
            image = members.get("jpg") or members.get("png") or members.get("webp")
            caption = members.get("txt", b"").decode("utf-8", errors="replace")
            try:
                img = open_image(image, max_pixels)
            except ImageRejected:
                continue
            if min(img.size) < min_side or not caption.strip():
                continue
            kept.append({"key": key, "src_shard": shard.name, "src_index": index, "image": image,
                         "img_width": img.width, "img_height": img.height, "caption": caption})
        table = pa.Table.from_pylist(kept)
        codecs = {name: "none" if name == "image" else "zstd" for name in table.column_names}  # as djray writes
        pq.write_table(table, out / f"{shard.stem}.parquet", compression=codecs, row_group_size=1024)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=4000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--cpus", type=int, default=os.cpu_count())
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()

    import ray

    from djray import pipeline
    from djray.config import parse_config
    from djray.sample_data import write_sample_corpus

    work = Path(args.workdir or tempfile.mkdtemp(prefix="djray-bench-"))
    corpus = work / f"corpus-{args.samples}-{args.shards}"
    if not corpus.exists():
        write_sample_corpus(str(corpus), args.samples, args.shards, "webdataset", seed=0)

    t0 = time.perf_counter()
    bare_rows = bare_loop(corpus, work / "bare")
    bare_s = time.perf_counter() - t0

    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR")
    out = work / "djray"
    shutil.rmtree(out, ignore_errors=True)
    cfg = parse_config({"input": {"path": str(corpus), "format": "webdataset"}, "output": {"path": str(out)}})
    t0 = time.perf_counter()
    manifest = pipeline.run(cfg, progress=False, log=lambda m: None)
    djray_s = time.perf_counter() - t0
    ray.shutdown()
    assert manifest["rows_in"] == bare_rows, (manifest["rows_in"], bare_rows)

    phases = manifest["run"]["phases_s"]
    print(f"corpus: {bare_rows} rows, {args.shards} shards, {args.cpus} CPUs")
    print(f"bare single-process loop : {bare_rows / bare_s:8.1f} rows/s ({bare_s:.2f}s)")
    print(f"djray run (whole job)    : {bare_rows / djray_s:8.1f} rows/s ({djray_s:.2f}s; phases {phases})")
    print(f"ratio djray / bare       : {bare_s / djray_s:8.2f}")
    print(f"ratio streaming phase / bare: {bare_s / phases['stream_s']:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
