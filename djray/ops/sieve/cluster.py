"""cluster: uniform sampling across spherical k-means clusters (seed-algorithms §7.2).

Budget n = round-half-up(keep_fraction · pool). Quotas: n split uniformly over the non-empty clusters, each capped
at its size, the remainder water-filled over the clusters that still have rows; the last r < (#clusters still
open) rows go one each to the open clusters of smallest id. Within a cluster the q rows with the smallest
u = blake2b(seed, key) are kept (ties: key).

Runtime shape: k-means on a seeded sample (`fit`), the assignment in the map tasks (`group` = cluster id), whole-pool
per-cluster counts summed from the map tasks and turned into quotas once (`plan`, O(k) state), then each cluster
decided on its own (`select`). Publishes `cluster_id` and `cos_to_centroid` (prefixed `cluster_` when the selection
runs another k-means).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from djray import schema as S
from djray.ops.sieve import kmeans as K
from djray.ops.sieve.base import GROUP, Decision, GroupSieve, SieveParams, keep_count, stable_hash64


class ClusterParams(K.KMeansFields):
    op: Literal["cluster"] = "cluster"
    keep_fraction: float = Field(gt=0.0, le=1.0)

    def kmeans_tags(self) -> tuple[str, ...]:
        return ("cluster",)

    def steps(self, prefixed: bool) -> list[SieveParams]:
        return [ClusterStepParams(**self.model_dump(), prefix=K.prefix_of("cluster", prefixed))]


class ClusterStepParams(ClusterParams):
    """The runtime step of `cluster`: its parameters plus the prefix of the columns it publishes."""

    prefix: str = ""


def water_fill(sizes: dict[int, int], n: int) -> dict[int, int]:
    """Quotas summing to min(n, Σ sizes): level L = the largest with Σ min(size, L) <= n, then one more row for the
    first (by cluster id) clusters larger than L until n is reached."""
    ids = sorted(c for c, s in sizes.items() if s > 0)
    size = np.array([sizes[c] for c in ids], dtype=np.int64)
    n = min(n, int(size.sum()))
    lo, hi = 0, int(size.max()) if size.size else 0
    while lo < hi:  # largest L with sum(min(size, L)) <= n
        mid = (lo + hi + 1) // 2
        if np.minimum(size, mid).sum() <= n:
            lo = mid
        else:
            hi = mid - 1
    quota = np.minimum(size, lo)
    extra = n - int(quota.sum())
    open_ = np.flatnonzero(size > lo)[:extra]
    quota[open_] += 1
    return {c: int(q) for c, q in zip(ids, quota)}


class ClusterSieve(K.KMeansFit, GroupSieve):
    name: ClassVar[str] = "cluster"
    Params: ClassVar[type[ClusterStepParams]] = ClusterStepParams
    reason: ClassVar[str] = S.Reason.CLUSTER_QUOTA
    fit_rows: ClassVar[Literal["none", "sample", "scan"]] = "sample"
    needs_group_sizes: ClassVar[bool] = True

    def __init__(self, params: ClusterStepParams):
        super().__init__(params)
        self.params: ClusterStepParams = params
        self.reads = (params.column,)
        self.writes = K.cluster_columns(params.prefix)
        self.quota: dict[int, int] = {}
        self.budget: int | None = None

    def group(self, rows: pa.Table) -> np.ndarray:
        return self.assign_rows(rows)[0]

    def plan(self, sizes: dict[int, int]) -> None:
        self.budget = keep_count(self.params.keep_fraction, sum(sizes.values()))
        self.quota = water_fill(sizes, self.budget)

    def select(self, rows: pa.Table) -> Decision:
        g = int(rows.column(GROUP)[0].as_py())
        cos = K.centroid_cos(K.unit_rows(rows, self.params.column), self.centroids[g])
        keys = rows.column(S.KEY).to_pylist()
        u = stable_hash64(self.params.seed, keys)
        order = np.lexsort((np.array(keys, dtype=object), u))
        q = self.quota.get(g, 0)
        keep = np.zeros(rows.num_rows, dtype=bool)
        keep[order[:q]] = True
        detail = f"outside the quota of cluster {g} ({q} of {rows.num_rows} rows kept by hash rank)"
        id_col, cos_col = self.writes
        return Decision(keep, [None if k else detail for k in keep],
                        {id_col: pa.array(np.full(rows.num_rows, g, np.int32)), cos_col: pa.array(cos)})

    def describe(self) -> dict[str, Any]:
        quotas = list(self.quota.values())
        return {"clusters": None if self.centroids is None else int(len(self.centroids)), "budget": self.budget,
                "quota_min": min(quotas, default=None), "quota_max": max(quotas, default=None)}
