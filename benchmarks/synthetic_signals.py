"""A synthetic signals store written straight to disk (no phase A, no images), for phase-B benchmarks.

Rows follow the signals schema: unique keys, `img_sha256` with a planted fraction of byte-identical duplicates,
a few phase-A rejects, and `vis_embedding` drawn around `clusters` random unit centres (L2-normalised, float32).

    write_store(root, rows=1_000_000, shards=1_000, dim=384)
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from djray import schema as S
from djray.runtime.layout import Layout


def shard_names(shards: int) -> list[str]:
    return [f"{s:06d}.tar" for s in range(shards)]


def shard_table(s: int, rows_per_shard: int, dim: int, clusters: int, dup_fraction: float, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed * 1_000_003 + s)
    n = rows_per_shard
    first = s * n
    ids = np.arange(first, first + n)
    dup = rng.random(n) < dup_fraction
    sha_ids = np.where(dup, rng.integers(0, max(1, first + n), n), ids)  # a duplicate copies an earlier (or own) id
    rejected = rng.random(n) < 0.01
    cols: dict[str, pa.Array] = {
        S.KEY: pa.array([f"k{i:010d}" for i in ids]),
        S.SRC_SHARD: pa.array([f"{s:06d}.tar"] * n),
        S.SRC_INDEX: pa.array(np.arange(n, dtype=np.int64)),
        S.STAGE: pa.array(np.where(rejected, "decode", None), pa.string()),
        S.REASON: pa.array(np.where(rejected, "corrupt_image", None), pa.string()),
        S.DETAIL: pa.nulls(n, pa.string()),
        S.IMG_WIDTH: pa.array(np.full(n, 640, np.int32)),
        S.IMG_HEIGHT: pa.array(np.full(n, 480, np.int32)),
        S.IMG_SHA256: pa.array([f"{i:064x}" for i in sha_ids]),
        S.CAPTION_RAW: pa.array(["a synthetic caption"] * n),
    }
    if dim:
        centres = np.random.default_rng(seed).standard_normal((clusters, dim)).astype(np.float32)
        emb = centres[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        cols[S.VIS_EMBEDDING] = pa.FixedSizeListArray.from_arrays(emb.reshape(-1), dim).cast(pa.list_(pa.float32()))
    return pa.table(cols)


def write_store(root: str, rows: int, shards: int, dim: int = 384, clusters: int = 1000, dup_fraction: float = 0.05,
                seed: int = 0) -> list[str]:
    """Write `rows` rows in `shards` signals files under root/signals/; return the shard names in order."""
    layout = Layout(root)
    os.makedirs(f"{root}/signals", exist_ok=True)
    per = rows // shards

    def one(s: int) -> None:
        table = shard_table(s, per, dim, clusters, dup_fraction, seed)
        pq.write_table(table, layout.signals(f"{s:06d}.tar"), compression="zstd", row_group_size=1024)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(one, range(shards)))
    return shard_names(shards)
