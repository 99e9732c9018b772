"""Spherical k-means and exact cosine arithmetic shared by the cluster, semdedup and d4 sieves (seed-algorithms §1.2).

* Embeddings are read as float32 from the signals store and L2-normalised in float64 (idempotent): `dino` is the
  vision branch's `vis_embedding`, `clip_image` the clip branch's `clip_image_embedding`.
* Centroids: `faiss.Kmeans(spherical=True)` (centroids re-normalised each iteration, assignment by inner product)
  trained on a seeded sample of the pool (`sample_per_centroid` ≥ 100 points per centroid; faiss's own subsampling
  is switched off so the sample is exactly the seeded one). Stored normalised, float64.
* Assignment: the centroid of highest cosine (first on exact ties), and `cos_to_centroid` rounded to float32 — the
  value decisions sort by, so a decision can be checked from the stored columns alone.

Exact and fast: similarities run as float32 matrix products (BLAS); every winner is re-checked in float64, and
rows whose two best candidates lie within `TIE_MARGIN` (far above float32 rounding of a 384–1024-d dot product of
unit vectors, ~2e-5 at worst) are recomputed entirely in float64. The result equals a float64 computation whatever
the block sizes, and the same rows give the same bits in every task.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from djray import schema as S
from djray.ops.sieve.base import SieveParams

EMBEDDINGS = {"dino": S.VIS_EMBEDDING, "clip_image": S.CLIP_IMAGE_EMBEDDING}
TIE_MARGIN = 1e-4
ASSIGN_BLOCK = 16384  # rows per similarity block (block × k float32 in memory)


class KMeansFields(SieveParams):
    """Parameters every k-means sieve shares."""

    n_clusters: int = Field(1000, ge=1)
    embedding: Literal["dino", "clip_image"] = "dino"
    seed: int = 1234  # k-means initialisation and the training sample (SemDeDup's clustering config)
    niter: int = Field(20, ge=1)
    sample_per_centroid: int = Field(256, ge=100)  # training points per centroid (seed-algorithms §1.2: 100–256)

    @property
    def column(self) -> str:
        return EMBEDDINGS[self.embedding]

    def training_rows(self, pool: int) -> int:
        return min(pool, self.n_clusters * self.sample_per_centroid)


def unit_rows(rows: pa.Table, column: str) -> np.ndarray:
    """(n, d) float64 L2-normalised embeddings of `column` (a list<float> per row; nulls and ragged rows fail)."""
    col = rows.column(column)
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    if n == 0:
        return np.zeros((0, 0), np.float64)
    if arr.null_count:
        raise ValueError(f"{column}: {arr.null_count} alive rows have no embedding")
    offsets = arr.offsets.to_numpy()
    d = int(offsets[1] - offsets[0])
    if d == 0 or not np.all(np.diff(offsets) == d):
        raise ValueError(f"{column}: embeddings of unequal or zero length")
    flat = arr.values.slice(int(offsets[0]), n * d).to_numpy(zero_copy_only=False)
    x = flat.astype(np.float64).reshape(n, d)
    norm = np.sqrt(np.einsum("ij,ij->i", x, x))
    if not np.all(np.isfinite(norm)) or np.any(norm == 0):
        raise ValueError(f"{column}: non-finite or zero embeddings")
    return x / norm[:, None]


def train(x: np.ndarray, k: int, seed: int, niter: int) -> np.ndarray:
    """Spherical faiss k-means on `x` (rows in a fixed order) → (min(k, n), d) float64 unit centroids."""
    import faiss

    n, d = x.shape
    k = max(1, min(k, n))
    km = faiss.Kmeans(d, k, niter=niter, seed=seed, spherical=True, nredo=1, verbose=False,
                      max_points_per_centroid=max(n // k + 1, 1), min_points_per_centroid=1)
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    c = km.centroids.astype(np.float64)
    return c / np.linalg.norm(c, axis=1, keepdims=True)


class KMeansFit:
    """What every k-means sieve shares: a seeded training sample, the centroids fitted on it, the assignment."""

    params: KMeansFields
    centroids: np.ndarray | None = None

    def sample_size(self, pool: int) -> int:
        return self.params.training_rows(pool)

    def fit(self, rows: Iterable[pa.Table]) -> None:
        self.centroids = fit_centroids(rows, self.params)

    def assign_rows(self, rows: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        return assign(unit_rows(rows, self.params.column), self.centroids)


def fit_centroids(rows: Iterable[pa.Table], p: KMeansFields) -> np.ndarray:
    """A sieve's `fit`: the centroids of its (sampled) rows; none for an empty pool."""
    table = pa.concat_tables(list(rows))
    if table.num_rows == 0:
        return np.zeros((0, 0))
    return train(unit_rows(table, p.column), p.n_clusters, p.seed, p.niter)


def assign(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: (cluster id int64, cos to that centroid rounded to float32) — exact float64 argmax, first on ties."""
    n = x.shape[0]
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    ids = np.zeros(n, np.int64)
    for b0 in range(0, n, ASSIGN_BLOCK):
        block = x[b0:b0 + ASSIGN_BLOCK]
        ids[b0:b0 + len(block)] = exact_argmax(block, centroids)
    return ids, cos_rows(x, centroids[ids])


def exact_argmax(q: np.ndarray, c: np.ndarray) -> np.ndarray:
    """argmax_j q_i·c_j per row of q (float64 semantics, first index on ties), through a float32 product."""
    s = q.astype(np.float32) @ c.astype(np.float32).T
    best = s.argmax(axis=1)
    top = s[np.arange(len(q)), best]
    close = (s >= (top - TIE_MARGIN)[:, None]).sum(axis=1) > 1
    for i in np.flatnonzero(close):
        best[i] = int(np.argmax(c @ q[i]))
    return best


def cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise float64 dot products, rounded to float32 (unit rows: cosines)."""
    return np.einsum("ij,ij->i", a, b).astype(np.float32)


def centroid_cos(x: np.ndarray, centroid: np.ndarray) -> np.ndarray:
    """cos of every row to one centroid, rounded to float32 (the value `assign` gives its members)."""
    return cos_rows(x, np.repeat(centroid[None, :], len(x), axis=0))


def cluster_columns(prefix: str) -> tuple[str, str]:
    return f"{prefix}cluster_id", f"{prefix}cos_to_centroid"


def prefix_of(tag: str, prefixed: bool) -> str:
    return f"{tag}_" if prefixed else ""
