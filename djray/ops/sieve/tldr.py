"""tldr: stride selection per cluster, intersected with the top CLIP-score half (seed-algorithms §7.7;
showlab/datacentric.vlp `fast_cluster.py`, `codebook_cluster.py`).

Substitution (recorded in the manifest): the paper clusters per-image VQ codebook indices of a BLIP model trained
with a codebook; here the features are the CLIP image embeddings, and the ITM score is `clip_score`.

1. ITM half — over the WHOLE pool: the exact top round-half-up(itm_fraction · pool) rows by clip_score (ties: key),
   found by a scan of 12 bytes per row; nothing is dropped yet, membership is published as `tldr_itm`.
2. Features — PCA to `pca_dim` (at most d) with whitening (faiss `PCAMatrix`, eigen_power −0.5) and L2, both learnt
   on the seeded k-means sample; k-means (L2, `n_clusters`, `niter`) on the transformed sample; every row to its
   nearest centroid (float64, a row whose two best centroids lie within 1e-6 is recomputed on its own).
3. Stride — within each cluster, members in key order (the deterministic stand-in for dataset order), keep
   positions 0, N, 2N, … (N = `stride`); a row is kept iff it is a stride member AND in the ITM half (intersection,
   both over the original pool). `keep_fraction` (optional) sets N = max(1, round(itm_fraction / keep_fraction)):
   the kept fraction is then about keep_fraction, not exact.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from djray import schema as S
from djray.ops.sieve import kmeans as K
from djray.ops.sieve.base import GROUP, ROW_ID, Decision, GroupSieve, RankSieve, SieveParams, keep_count
from djray.ops.sieve.clip_score import clip_scores
from djray.ops.sieve.vas import clip_top, in_top

ITM = "tldr_itm"
MARGIN = 1e-6
SUBSTITUTION = "CLIP image embeddings instead of VQ codebook indices; clip_score instead of BLIP ITM"


class TldrParams(K.KMeansFields):
    op: Literal["tldr"] = "tldr"
    keep_fraction: float | None = Field(None, gt=0.0, le=1.0)
    stride: int = Field(5, ge=1)
    pca_dim: int = Field(256, ge=1)
    itm_fraction: float = Field(0.5, gt=0.0, le=1.0)
    embedding: Literal["dino", "clip_image"] = "clip_image"

    def steps(self, prefixed: bool) -> list[SieveParams]:
        stride = self.stride if self.keep_fraction is None else max(1, round(self.itm_fraction / self.keep_fraction))
        return [ItmParams(itm_fraction=self.itm_fraction),
                StrideParams(n_clusters=self.n_clusters, embedding=self.embedding, seed=self.seed, niter=self.niter,
                             sample_per_centroid=self.sample_per_centroid, stride=stride, pca_dim=self.pca_dim)]


class ItmParams(SieveParams):
    op: Literal["tldr"] = "tldr"
    itm_fraction: float


class StrideParams(K.KMeansFields):
    op: Literal["tldr"] = "tldr"
    stride: int
    pca_dim: int
    embedding: Literal["dino", "clip_image"] = "clip_image"


class TldrItm(RankSieve):
    """Step 1: drops nothing; publishes whether a row is in the top itm_fraction of the whole pool."""

    name: ClassVar[str] = "tldr"
    Params: ClassVar[type[ItmParams]] = ItmParams
    reads: ClassVar[tuple[str, ...]] = (S.CLIP_SCORE,)
    writes: ClassVar[tuple[str, ...]] = (ITM,)
    reason: ClassVar[str] = S.Reason.TLDR_NOT_SELECTED
    fit_rows: ClassVar[Literal["none", "sample", "scan"]] = "scan"

    def __init__(self, params: ItmParams):
        super().__init__(params)
        self.cut, self.ties, self.n = np.inf, np.zeros(0, np.int64), 0

    def fit(self, rows: Iterable[pa.Table]) -> None:
        ids, clip, keys = [], [], []
        for t in rows:
            ids.append(t.column(ROW_ID).to_numpy())
            clip.append(clip_scores(t))
            keys.append(t.column(S.KEY))
        row_id = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        self.n = keep_count(self.params.itm_fraction, row_id.size)
        scores = np.concatenate(clip) if clip else np.zeros(0, np.float32)
        _, self.cut, self.ties = clip_top(row_id, scores, pa.chunked_array(keys, pa.string()), self.n)

    def score(self, rows: pa.Table) -> np.ndarray:
        return np.zeros(rows.num_rows, np.float32)

    def threshold(self) -> float | None:
        return -np.inf

    def publish(self, rows: pa.Table, score: np.ndarray) -> dict[str, pa.Array]:
        return {ITM: pa.array(in_top(rows, clip_scores(rows), self.cut, self.ties))}

    def describe(self) -> dict[str, Any]:
        return {"itm_rows": self.n, "clip_cutoff": None if np.isinf(self.cut) else float(self.cut),
                "substitution": SUBSTITUTION}


class TldrStride(GroupSieve):
    name: ClassVar[str] = "tldr"
    Params: ClassVar[type[StrideParams]] = StrideParams
    writes: ClassVar[tuple[str, ...]] = ("tldr_cluster_id",)
    reason: ClassVar[str] = S.Reason.TLDR_NOT_SELECTED
    fit_rows: ClassVar[Literal["none", "sample", "scan"]] = "sample"

    def __init__(self, params: StrideParams):
        super().__init__(params)
        self.params: StrideParams = params
        self.reads = (params.column, ITM)
        self.bias = self.proj = self.centroids = None

    def sample_size(self, pool: int) -> int:
        return self.params.training_rows(pool)

    def fit(self, rows: Iterable[pa.Table]) -> None:
        import faiss

        table = pa.concat_tables(list(rows))
        if table.num_rows == 0:
            return
        x = K.unit_rows(table, self.params.column)
        d = x.shape[1]
        pca = faiss.PCAMatrix(d, min(self.params.pca_dim, d), -0.5)
        pca.train(np.ascontiguousarray(x, dtype=np.float32))
        # faiss folds the whitening (eigenvalue^-0.5) into A and the centring into b: z = A x + b
        self.proj = faiss.vector_to_array(pca.A).reshape(pca.d_out, d).astype(np.float64)
        self.bias = faiss.vector_to_array(pca.b).astype(np.float64)
        z = self._transform(x)
        k = max(1, min(self.params.n_clusters, len(z)))
        km = faiss.Kmeans(z.shape[1], k, niter=self.params.niter, seed=self.params.seed, nredo=1, verbose=False,
                          max_points_per_centroid=max(len(z) // k + 1, 1), min_points_per_centroid=1)
        km.train(np.ascontiguousarray(z, dtype=np.float32))
        self.centroids = km.centroids.astype(np.float64)

    def _transform(self, x: np.ndarray) -> np.ndarray:
        z = x @ self.proj.T + self.bias
        return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-30)

    def _assign(self, x: np.ndarray) -> np.ndarray:
        half = 0.5 * (self.centroids ** 2).sum(axis=1)
        s = self._transform(x) @ self.centroids.T - half
        best = s.argmax(axis=1)
        top = s[np.arange(len(s)), best]
        close = (s >= (top - MARGIN)[:, None]).sum(axis=1) > 1
        for i in np.flatnonzero(close):  # near a boundary: the row alone, the same arithmetic in every task
            row = self._transform(x[i:i + 1])[0]
            best[i] = int(np.argmax(np.array([row @ c for c in self.centroids]) - half))
        return best

    def group(self, rows: pa.Table) -> np.ndarray:
        return self._assign(K.unit_rows(rows, self.params.column)) if rows.num_rows else np.zeros(0, np.int64)

    def select(self, rows: pa.Table) -> Decision:
        n, stride, g = rows.num_rows, self.params.stride, int(rows.column(GROUP)[0].as_py())
        position = np.empty(n, np.int64)
        position[pc.sort_indices(rows.column(S.KEY)).to_numpy()] = np.arange(n)
        member = position % stride == 0
        itm = np.asarray(pc.fill_null(rows.column(ITM), False).to_numpy(zero_copy_only=False), dtype=bool)
        keep = member & itm
        detail = [None if k else (f"position {p} of cluster {g} is not a multiple of the stride {stride}" if not m
                                  else "stride member of its cluster, outside the top CLIP-score half")
                  for k, m, p in zip(keep, member, position)]
        return Decision(keep, detail, {"tldr_cluster_id": pa.array(np.full(n, g, np.int32))})

    def describe(self) -> dict[str, Any]:
        return {"clusters": None if self.centroids is None else int(len(self.centroids)), "stride": self.params.stride,
                "pca_dim": None if self.proj is None else int(self.proj.shape[0]), "substitution": SUBSTITUTION}
