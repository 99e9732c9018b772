"""What the Python surface costs on top of the runtime's own code, in one process on one machine:

1. `djray.udf("decode")` on a user batch (image, caption) against the runtime's ops (DecodeOp + CaptionCheckOp via
   `apply_op_output`) on the same rows already in the runtime's layout: the column mapping of the UDF wrapper.
2. `djray.udf("dino_patch")` against `DinoPatchScorer` itself (vit_small_patch16_224.dino, random weights, fp32).
3. `djray inspect`'s lookup (`find_row`) over outputs of growing size: it scans the key column of every data file.

    python benchmarks/python_api.py [--rows 256 1024] [--files 10 40]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import djray  # noqa: E402
from djray import schema as S  # noqa: E402
from djray.ops.base import apply_op_output  # noqa: E402
from djray.sample_data import make_sample  # noqa: E402
from djray.udfs import to_internal  # noqa: E402


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def paired(a, b, repeat: int = 3) -> tuple[float, float]:
    """Best-of timings of `a` and `b`, interleaved (a, b, a, b, ...) so that load changes hit both alike."""
    ta, tb = [], []
    for _ in range(repeat):
        ta.append(best_of(a, 1))
        tb.append(best_of(b, 1))
    return min(ta), min(tb)


def user_batch(n: int) -> pa.Table:
    samples = [make_sample(i % 64, seed=1) for i in range(n)]
    return pa.table({"key": [f"k{i}" for i in range(n)], "image": [s["image"] for s in samples],
                     "caption": [s["caption"] for s in samples]})


def bench_decode(n: int) -> None:
    batch = user_batch(n)
    udf = djray.udf("decode", image_size=224)
    internal, _ = to_internal(batch)

    def runtime():
        t = internal
        for op in udf.ops:
            t = apply_op_output(t, op, op(t))

    raw, wrapped = paired(runtime, lambda: udf(batch))
    print(f"BENCH name=udf_decode rows={n} wall_s={wrapped:.3f} peak_rss_mb={peak_mb():.0f} runtime_s={raw:.3f} "
          f"ratio={wrapped / raw:.3f}")


def bench_dino(n: int) -> None:
    from djray._compat import patch_torchvision

    patch_torchvision()
    decoded = djray.udf("decode", image_size=224)(user_batch(n))
    dino = djray.udf("dino_patch", weights="random", precision="fp32", batch_size=32)()
    op = dino.ops[0]
    internal, _ = to_internal(decoded)
    raw, wrapped = paired(lambda: apply_op_output(internal, op, op(internal)), lambda: dino(decoded))
    print(f"BENCH name=udf_dino_patch rows={n} wall_s={wrapped:.3f} peak_rss_mb={peak_mb():.0f} runtime_s={raw:.3f} "
          f"ratio={wrapped / raw:.3f}")


def bench_inspect(files: int, rows_per_file: int = 10_000) -> None:
    from djray.inspector import find_row

    with tempfile.TemporaryDirectory() as root:
        (Path(root) / "data").mkdir()
        rng = np.random.default_rng(0)
        for f in range(files):
            keys = [f"{f:05d}{i:06d}" for i in range(rows_per_file)]
            scores = pa.array(list(rng.random((rows_per_file, 196), dtype=np.float32)), pa.list_(pa.float32()))
            pq.write_table(pa.table({S.KEY: keys, S.SRC_SHARD: [f"{f:05d}.tar"] * rows_per_file,
                                     S.SRC_INDEX: np.arange(rows_per_file), S.IMAGE: [b"x" * 2048] * rows_per_file,
                                     S.PATCH_SCORES: scores}), f"{root}/data/{f:05d}.parquet", row_group_size=2048)
        target = f"{files - 1:05d}{rows_per_file // 2:06d}"
        wall = best_of(lambda: find_row(root, target))
        one = best_of(lambda: find_row(root, target, shard=f"{files - 1:05d}.tar"))
        print(f"BENCH name=inspect_find_row rows={files * rows_per_file} wall_s={wall:.3f} peak_rss_mb={peak_mb():.0f} "
              f"files={files} with_shard_s={one:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--dino-rows", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--files", type=int, nargs="+", default=[10, 40])
    args = ap.parse_args()
    for n in args.rows:
        bench_decode(n)
    for n in args.dino_rows:
        bench_dino(n)
    for f in args.files:
        bench_inspect(f)


if __name__ == "__main__":
    main()
