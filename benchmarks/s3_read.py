"""Reading shards from S3 vs local disk: rows/s and requests per shard, before and after the sequential reader.

What is measured: one read task's work per shard, in one process — read every row of the shard with djray's reader
and decode its image (`open_image`, the decode stage's checks) — over the same corpus from local disk and from an
S3-protocol server (moto) on loopback behind a proxy that adds a first-byte latency to every request (20 ms by
default: what S3 costs per request). Requests are counted at the proxy, per shard.

"before" is the previous reader code, measured from the commit before the change (`--before`, default 89e2bb1): its
`djray` package is extracted with `git archive` to a temporary directory and imported instead of this tree's (tar:
tarfile over `open_input_stream`, one GET per 10 KiB read; Parquet: `ParquetFile` over `open_input_file`, one GET per
column chunk). "after" is this tree (`open_sequential`: 8 MiB windows read ahead; Parquet with pre-buffered column
chunks). Both use a plain `pyarrow.fs.S3FileSystem` for the endpoint, so only the reader differs. The old path is
slow on S3 (~6 requests per sample), so "before" reads only the first `--before-shards` shards of each size.

    python benchmarks/s3_read.py [--latency-ms 20] [--sizes 100,400] [--shards 4] [--before 89e2bb1]

Prints one BENCH line per measurement and the S3/local ratios measured in this run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the fault-injecting proxy (tests/s3_faults.py)


def measure(args: argparse.Namespace) -> None:
    """The measured loop, in a subprocess whose `djray` is the code under test (PYTHONPATH)."""
    import pyarrow.fs as pafs

    from djray.geometry import ImageRejected, open_image

    if args.fmt == "webdataset":
        from djray.io.webdataset import read_webdataset_shard as read
    else:
        from djray.io.parquet import read_parquet_shard as read
    if args.endpoint:
        fs = pafs.S3FileSystem(endpoint_override=args.endpoint.split("://")[1], scheme="http", region="us-east-1")
    else:
        fs = pafs.LocalFileSystem()
    paths = json.loads(args.paths)
    t0 = time.perf_counter()
    rows = 0
    for order, path in enumerate(paths):
        for table in read(fs, path, path.rsplit("/", 1)[1], order, rows_per_block=256):
            for image in table.column("image").to_pylist():
                if image is not None:
                    rows += 1
                    try:
                        open_image(image, 89_478_485)
                    except ImageRejected:
                        pass
    wall = time.perf_counter() - t0
    print(json.dumps({"rows": rows, "wall_s": wall,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run_measure(tree: Path, fmt: str, paths: list[str], endpoint: str | None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_EC2_METADATA_DISABLED": "true"}
    cmd = [sys.executable, __file__, "--measure", "--fmt", fmt, "--paths", json.dumps(paths)]
    if endpoint:
        cmd += ["--endpoint", endpoint]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if r.returncode:
        raise SystemExit(f"measurement failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--sizes", default="100,400", help="rows per shard, comma-separated")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--before", default="89e2bb1", help="commit whose reader is 'before' ('' to skip)")
    ap.add_argument("--before-shards", type=int, default=1)
    ap.add_argument("--formats", default="webdataset,parquet")
    ap.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--fmt", help=argparse.SUPPRESS)
    ap.add_argument("--paths", help=argparse.SUPPRESS)
    ap.add_argument("--endpoint", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        measure(args)
        return 0

    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_EC2_METADATA_DISABLED="true")
    import boto3
    from moto.server import ThreadedMotoServer
    from s3_faults import FaultPlan, FaultyS3

    from djray.sample_data import write_sample_corpus

    work = Path(tempfile.mkdtemp(prefix="djray-s3bench-"))
    trees = {"after": REPO}
    if args.before:
        before = work / "before"
        before.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.before, "djray"], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
        trees["before"] = before

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    upstream = f"http://{host}:{port}"
    s3 = boto3.client("s3", endpoint_url=upstream, region_name="us-east-1")
    s3.create_bucket(Bucket="bench")
    proxy = FaultyS3(upstream)
    ratios = []
    try:
        for fmt in args.formats.split(","):
            for size in (int(s) for s in args.sizes.split(",")):
                local = work / f"{fmt}-{size}"
                write_sample_corpus(str(local), size * args.shards, args.shards, fmt, seed=0)
                files = sorted(p for p in local.iterdir() if p.is_file())
                for f in files:
                    s3.upload_file(str(f), "bench", f"{fmt}-{size}/{f.name}")
                mean_mb = sum(f.stat().st_size for f in files) / len(files) / 1e6
                for code, tree in trees.items():
                    chosen = files[: args.before_shards] if code == "before" else files
                    rates = {}
                    for store in ("local", "s3"):
                        paths = ([str(f) for f in chosen] if store == "local"
                                 else [f"bench/{fmt}-{size}/{f.name}" for f in chosen])
                        proxy.reset(FaultPlan(latency_s=args.latency_ms / 1000))
                        m = run_measure(tree, fmt, paths, proxy.url if store == "s3" else None)
                        gets = len(proxy.requests("GET")) / len(chosen)
                        heads = len(proxy.requests("HEAD")) / len(chosen)
                        rates[store] = m["rows"] / m["wall_s"]
                        print(f"BENCH name=s3_read.{fmt}.{code}.{store} rows={m['rows']} wall_s={m['wall_s']:.3f} "
                              f"peak_rss_mb={m['peak_rss_mb']:.0f} rows_per_s={rates[store]:.1f} "
                              f"shard_rows={size} shard_mb={mean_mb:.2f} shards={len(chosen)} "
                              f"latency_ms={args.latency_ms:g} gets_per_shard={gets:.1f} heads_per_shard={heads:.1f} "
                              f"target_gets_per_shard={math.ceil(mean_mb * 1e6 / (8 << 20)) + 2}", flush=True)
                    ratios.append((fmt, size, code, rates["s3"] / rates["local"]))
        print(f"\nS3 ({args.latency_ms:g} ms per request) / local disk, rows/s of read + decode, one process:")
        for fmt, size, code, ratio in ratios:
            print(f"  {fmt:<10} {size:>5} rows/shard  {code:<6}  {ratio:.2f}")
    finally:
        proxy.close()
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
