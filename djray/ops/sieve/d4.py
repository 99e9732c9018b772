"""d4: SemDeDup, then prune the most prototypical survivors (seed-algorithms §7.5; Tirumala et al. 2023, no code).

1. SemDeDup (§7.4, `keep`) keeping exactly round-half-up(dedup_fraction · pool) rows (lowest M, ties by key).
2. A FRESH spherical k-means (`proto_clusters`, default `n_clusters`) on a seeded sample of the survivors.
3. Prototypicality = cosine to the own (new) centroid; the most prototypical are pruned, keeping
   n = round-half-up(keep_fraction / dedup_fraction · survivors) rows (R_dedup · R_proto = R_target):
   `ranking: global` (default, Sorscher's SSL-prototype metric) keeps the n lowest cosines over all survivors
   (ties by key); `per_cluster` gives every cluster the same fraction — quotas ∝ cluster size by largest
   remainder (ties: smaller cluster id) — and keeps the lowest cosines inside each.

Runs as three steps (stage `sieve:d4`): the SemDeDup scan and cut (`semdedup.py`, publishing `d4_dedup_cluster_id`,
`d4_dedup_cos_to_centroid`, `d4_max_sim`, `d4_nearest`), then the prune (publishing `d4_cluster_id`,
`d4_cos_to_centroid`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from djray import schema as S
from djray.ops.sieve import kmeans as K
from djray.ops.sieve.base import GROUP, Decision, GroupSieve, RankSieve, SieveParams, keep_count, top_n_mask
from djray.ops.sieve.semdedup import CutParams, ScanParams


class D4Params(K.KMeansFields):
    op: Literal["d4"] = "d4"
    keep_fraction: float = Field(gt=0.0, le=1.0)
    dedup_fraction: float = Field(0.75, gt=0.0, le=1.0)
    proto_clusters: int | None = Field(None, ge=1)
    keep: Literal["hard", "easy", "random"] = "hard"
    ranking: Literal["global", "per_cluster"] = "global"

    @model_validator(mode="after")
    def _fractions(self) -> D4Params:
        if self.keep_fraction > self.dedup_fraction:
            raise ValueError(f"keep_fraction {self.keep_fraction} exceeds dedup_fraction {self.dedup_fraction}")
        return self

    def kmeans_tags(self) -> tuple[str, ...]:
        return ("d4_dedup", "d4")

    def steps(self, prefixed: bool) -> list[SieveParams]:
        shared = dict(embedding=self.embedding, seed=self.seed, niter=self.niter,
                      sample_per_centroid=self.sample_per_centroid)
        proto = ProtoGlobalParams if self.ranking == "global" else ProtoClusterParams
        return [ScanParams(op="d4", n_clusters=self.n_clusters, keep=self.keep, prefix="d4_dedup_", **shared),
                CutParams(op="d4", keep_fraction=self.dedup_fraction),
                proto(n_clusters=self.proto_clusters or self.n_clusters, prefix="d4_",
                      fraction=self.keep_fraction / self.dedup_fraction, **shared)]


class ProtoParams(K.KMeansFields):
    """Step 3 of d4: fresh k-means on the survivors, keep the `fraction` least prototypical."""

    op: Literal["d4"] = "d4"
    fraction: float = Field(gt=0.0, le=1.0)
    prefix: str = "d4_"


class ProtoGlobalParams(ProtoParams):
    ranking: Literal["global"] = "global"


class ProtoClusterParams(ProtoParams):
    ranking: Literal["per_cluster"] = "per_cluster"


class _Proto(K.KMeansFit):
    """What both prune variants share: the fresh k-means and the published columns."""

    params: ProtoParams

    def _setup(self, params: ProtoParams) -> None:
        self.reads = (params.column,)
        self.writes = K.cluster_columns(params.prefix)
        self.centroids = None

    def describe(self) -> dict[str, Any]:
        return {"clusters": None if self.centroids is None else int(len(self.centroids)),
                "ranking": self.params.ranking}


class D4ProtoGlobal(_Proto, RankSieve):
    name: ClassVar[str] = "d4"
    Params: ClassVar[type[ProtoGlobalParams]] = ProtoGlobalParams
    reason: ClassVar[str] = S.Reason.D4_PROTOTYPICAL
    fit_rows: ClassVar[Literal["none", "sample", "scan"]] = "sample"

    def __init__(self, params: ProtoGlobalParams):
        super().__init__(params)
        self._setup(params)
        self._memo: tuple[pa.Table, np.ndarray, np.ndarray] | None = None

    def _assigned(self, rows: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        if self._memo is None or self._memo[0] is not rows:  # score() then publish() on the same rows
            self._memo = (rows, *self.assign_rows(rows))
        return self._memo[1], self._memo[2]

    def score(self, rows: pa.Table) -> np.ndarray:
        return -self._assigned(rows)[1]

    def budget(self, pool: int) -> int:
        return keep_count(self.params.fraction, pool)

    def publish(self, rows: pa.Table, score: np.ndarray) -> dict[str, pa.Array]:
        ids, cos = self._assigned(rows)
        self._memo = None
        return {self.writes[0]: pa.array(ids.astype(np.int32)), self.writes[1]: pa.array(cos)}

    def drop_detail(self, score: float, cutoff: float | None) -> str:
        return f"prototypical: cos to its centroid {-score:.4f} above the cut-off {-(cutoff or 0.0):.4f}"


def largest_remainder(sizes: dict[int, int], n: int) -> dict[int, int]:
    """Quotas ∝ size summing to n (≤ Σ sizes): floors of n·size/total, then +1 by largest remainder (exact
    integer arithmetic), ties to the smaller cluster id."""
    ids = sorted(sizes)
    total = sum(sizes.values())
    if total == 0:
        return {c: 0 for c in ids}
    num = [n * sizes[c] for c in ids]
    quota = [v // total for v in num]
    rest = sorted(range(len(ids)), key=lambda i: (-(num[i] % total), ids[i]))[: n - sum(quota)]
    for i in rest:
        quota[i] += 1
    return {c: q for c, q in zip(ids, quota)}


class D4ProtoPerCluster(_Proto, GroupSieve):
    name: ClassVar[str] = "d4"
    Params: ClassVar[type[ProtoClusterParams]] = ProtoClusterParams
    reason: ClassVar[str] = S.Reason.D4_PROTOTYPICAL
    fit_rows: ClassVar[Literal["none", "sample", "scan"]] = "sample"
    needs_group_sizes: ClassVar[bool] = True

    def __init__(self, params: ProtoClusterParams):
        super().__init__(params)
        self._setup(params)
        self.quota: dict[int, int] = {}

    def group(self, rows: pa.Table) -> np.ndarray:
        return self.assign_rows(rows)[0]

    def plan(self, sizes: dict[int, int]) -> None:
        self.quota = largest_remainder(sizes, keep_count(self.params.fraction, sum(sizes.values())))

    def select(self, rows: pa.Table) -> Decision:
        g = int(rows.column(GROUP)[0].as_py())
        cos = K.centroid_cos(K.unit_rows(rows, self.params.column), self.centroids[g])
        q = self.quota.get(g, 0)
        keep = top_n_mask(-cos, q, [rows.column(S.KEY)])
        detail = f"prototypical: among the {rows.num_rows - q} rows of cluster {g} closest to its centroid"
        return Decision(keep, [None if k else detail for k in keep],
                        {self.writes[0]: pa.array(np.full(rows.num_rows, g, np.int32)), self.writes[1]: pa.array(cos)})
