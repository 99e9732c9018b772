"""Synthetic signals stores for phase-B benchmarks, written straight into `OUTPUT/signals/<shard>.parquet` as phase A
would, without any pixels: unique keys, `img_sha256` with a planted fraction of byte-identical duplicates, 1 % phase-A
rejects, clustered unit embeddings (`vis_embedding`, plus planted near-duplicates) and a `clip_score` column.

    from synthetic_signals import write_signals_store, selection_context
    shards = write_signals_store("/tmp/store", rows=1_000_000, dim=384, shard_rows=10_000)
    ctx = selection_context("/tmp/store", shards, params)      # params: expanded sieve steps

Used by benchmarks/sieve_scale.py and benchmarks/selection_scale.py.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from djray import schema as S
from djray.io.fs import Storage
from djray.ops.sieve import build_sieve
from djray.runtime.decisions import SelectionContext, Step
from djray.runtime.layout import Layout


def clustered_embeddings(rng: np.random.Generator, n: int, dim: int, centres: np.ndarray, spread: float,
                         near_fraction: float) -> np.ndarray:
    """n rows around random centres; a `near_fraction` of them copies the row before it plus tiny noise."""
    x = centres[rng.integers(0, len(centres), n)] + spread * rng.standard_normal((n, dim), np.float32)
    near = np.flatnonzero(rng.random(n) < near_fraction)
    near = near[near > 0]
    x[near] = x[near - 1] + 0.01 * rng.standard_normal((len(near), dim), np.float32)
    return x


def _list_column(x: np.ndarray) -> pa.Array:
    n, d = x.shape
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(x.reshape(-1), pa.float32()))


def write_shard(root: str, name: str, start: int, rng: np.random.Generator, x: np.ndarray | None,
                dup_fraction: float) -> None:
    n = len(x) if x is not None else 0
    ids = np.arange(start, start + n)
    dup = rng.random(n) < dup_fraction
    sha_ids = np.where(dup, rng.integers(0, start + n, n), ids)  # a duplicate copies an earlier (or its own) image
    rejected = rng.random(n) < 0.01
    cols = {
        S.KEY: pa.array([f"{i:010d}" for i in ids]),
        S.SRC_SHARD: pa.array([name] * n), S.SRC_INDEX: pa.array(np.arange(n, dtype=np.int64)),
        S.STAGE: pa.array(np.where(rejected, "decode", None), pa.string()),
        S.REASON: pa.array(np.where(rejected, "corrupt_image", None), pa.string()),
        S.DETAIL: pa.nulls(n, pa.string()),
        S.IMG_SHA256: pa.array([f"{i:064x}" for i in sha_ids]),
        S.VIS_EMBEDDING: _list_column(x), S.CLIP_SCORE: pa.array(np.round(rng.random(n), 3).astype(np.float32)),
    }
    path = Layout(root).signals(name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.table(cols), path, compression="zstd")


def write_signals_store(root: str, rows: int, dim: int = 384, shard_rows: int = 10_000, centres: int = 1000,
                        spread: float = 0.06, near_fraction: float = 0.1, dup_fraction: float = 0.05,
                        seed: int = 0) -> list[str]:
    """Write `rows` signal rows in shards of `shard_rows`; returns the shard names in order."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim), np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    names = [f"shard-{i:05d}.tar" for i in range((rows + shard_rows - 1) // shard_rows)]

    def one(i: int) -> None:
        r = np.random.default_rng([seed, i])
        n = min(shard_rows, rows - i * shard_rows)
        write_shard(root, names[i], i * shard_rows, r, clustered_embeddings(r, n, dim, c, spread, near_fraction),
                    dup_fraction)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(one, range(len(names))))
    return names


def selection_context(root: str, shards: list[str], steps: list) -> SelectionContext:
    """A phase-B context over the store at `root` for already expanded sieve steps (fingerprints are dummies)."""
    built = [build_sieve(p) for p in steps]
    return SelectionContext(root, root, Storage(), tuple(shards), "b" * 64,
                            tuple(Step(i, p.op, s.reason, tuple(s.writes), f"{i:064d}")
                                  for i, (p, s) in enumerate(zip(steps, built))))
