"""semdedup: semantic deduplication (seed-algorithms §7.4, facebookresearch/SemDeDup).

1. Spherical k-means on a seeded sample (`n_clusters`, `seed`); every row to the centroid of highest cosine.
2. Each cluster sorted by distance to its centroid: `keep: hard` (default) = DESCENDING distance (ascending
   `cos_to_centroid`: the least prototypical first), `easy` = ascending distance, `random` = blake2b(seed, key);
   ties by key.
3. M_j = max cosine of row j to any EARLIER row of its cluster in that order, whether or not that row is itself
   dropped (null for a cluster's first row: nothing to duplicate).
4. Drop j iff M_j > 1 − ε (strict). Or `keep_fraction`: keep EXACTLY n = round-half-up(f · pool) rows, the n of
   lowest M (ties by key) — ε = 1 − (the largest M kept), reported.

It runs as two steps. The scan (step "semdedup", drops nothing) computes M blockwise — a 50k-row cluster never
builds a c² matrix, only `BLOCK`² tiles — and publishes `cluster_id`, `cos_to_centroid`, `semdedup_max_sim` (M,
float32) and `semdedup_nearest` (the earlier row M comes from). The cut reads those columns and decides. The scan's
fingerprint leaves ε and keep_fraction out, so another ε re-selects from the stored M without any cosine computed.
A dropped row's detail names the earlier row it duplicates: "near-duplicate of key K (<shard>#<index>, cos 0.974)"
(that row may itself be a dropped duplicate: follow its detail to the survivor).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from djray import schema as S
from djray.ops.sieve import kmeans as K
from djray.ops.sieve.base import GROUP, Decision, GroupSieve, RankSieve, SieveParams, float32_ceil, hash_order, \
    keep_count

BLOCK = 2048  # tile side of the blocked pairwise similarity
NO_EARLIER = 2.0  # cut score (−M) of a row with no earlier row in its cluster: above every real −M


class SemDedupParams(K.KMeansFields):
    op: Literal["semdedup"] = "semdedup"
    eps: float | None = Field(None, ge=0.0, lt=1.0)
    keep_fraction: float | None = Field(None, gt=0.0, le=1.0)
    keep: Literal["hard", "easy", "random"] = "hard"

    @model_validator(mode="after")
    def _one_rule(self) -> SemDedupParams:
        if (self.eps is None) == (self.keep_fraction is None):
            raise ValueError("give exactly one of eps or keep_fraction")
        return self

    def kmeans_tags(self) -> tuple[str, ...]:
        return ("semdedup",)

    def steps(self, prefixed: bool) -> list[SieveParams]:
        scan = ScanParams(op="semdedup", n_clusters=self.n_clusters, embedding=self.embedding, seed=self.seed,
                          niter=self.niter, sample_per_centroid=self.sample_per_centroid, keep=self.keep,
                          prefix=K.prefix_of("semdedup", prefixed))
        return [scan, CutParams(op="semdedup", eps=self.eps, keep_fraction=self.keep_fraction)]


class ScanParams(K.KMeansFields):
    """Step 1 of semdedup (and of d4): k-means, sort, M. No ε here: its decisions are reused across ε."""

    op: Literal["semdedup", "d4"]
    keep: Literal["hard", "easy", "random"] = "hard"
    prefix: str = ""


class CutParams(SieveParams):
    """Step 2 of semdedup (and of d4): ε or an exact keep count over the M published by the scan."""

    op: Literal["semdedup", "d4"]
    eps: float | None = None
    keep_fraction: float | None = None


def m_columns(owner: str) -> tuple[str, str]:
    return f"{owner}_max_sim", f"{owner}_nearest"


def max_earlier(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For unit rows x (in sort order): M_j = max_{i<j} x_i·x_j and the first i attaining it, float64 semantics;
    M_0 = -inf, partner -1. Float32 tiles track the best two per column; near-ties are recomputed in float64."""
    c = len(x)
    x32 = x.astype(np.float32)
    best = np.full(c, -np.inf, np.float32)
    second = np.full(c, -np.inf, np.float32)
    arg = np.full(c, -1, np.int64)
    for j0 in range(0, c, BLOCK):
        j1 = min(c, j0 + BLOCK)
        cols = np.arange(j1 - j0)
        for i0 in range(0, j1, BLOCK):
            i1 = min(j1, i0 + BLOCK)
            s = x32[i0:i1] @ x32[j0:j1].T
            if i1 > j0:
                s[np.arange(i0, i1)[:, None] >= np.arange(j0, j1)[None, :]] = -np.inf
            a = s.argmax(axis=0)
            m1 = s[a, cols]
            s[a, cols] = -np.inf
            m2 = s.max(axis=0)
            b, sec = best[j0:j1], second[j0:j1]
            second[j0:j1] = np.maximum(np.minimum(b, m1), np.maximum(sec, m2))
            better = m1 > b
            arg[j0:j1] = np.where(better, a + i0, arg[j0:j1])
            best[j0:j1] = np.maximum(b, m1)
    m = np.full(c, -np.inf)
    has = arg >= 0
    m[has] = np.einsum("ij,ij->i", x[has], x[arg[has]])
    near_tie = has & (second > -np.inf) & (best - np.where(second > -np.inf, second, 0) < K.TIE_MARGIN)
    for j in np.flatnonzero(near_tie):
        sims = x[:j] @ x[j]
        arg[j] = int(np.argmax(sims))
        m[j] = sims[arg[j]]
    return m, arg


def sort_order(cos: np.ndarray, keys: list[str], keep: str, seed: int) -> np.ndarray:
    """Positions in SemDeDup order: hard = cos ascending (farthest first), easy = cos descending, random = hash."""
    if keep == "random":
        return hash_order(seed, keys)
    table = pa.table({"p": pa.array(cos), "k": pa.array(keys, pa.string())})
    direction = "ascending" if keep == "hard" else "descending"
    return pc.sort_indices(table, sort_keys=[("p", direction), ("k", "ascending")]).to_numpy()


class SemDedupScan(K.KMeansFit, GroupSieve):
    name: ClassVar[str] = "semdedup"
    Params: ClassVar[type[ScanParams]] = ScanParams
    reason: ClassVar[str] = S.Reason.SEMDEDUP_DUPLICATE
    fit_rows: ClassVar[Literal["none", "sample", "scan"]] = "sample"

    def __init__(self, params: ScanParams):
        super().__init__(params)
        self.params: ScanParams = params
        self.reads = (params.column,)
        self.writes = (*K.cluster_columns(params.prefix), *m_columns(params.op))

    def group(self, rows: pa.Table) -> np.ndarray:
        return self.assign_rows(rows)[0]

    def select(self, rows: pa.Table) -> Decision:
        n = rows.num_rows
        g = int(rows.column(GROUP)[0].as_py())
        x = K.unit_rows(rows, self.params.column)
        cos = K.centroid_cos(x, self.centroids[g])
        keys = rows.column(S.KEY).to_pylist()
        order = sort_order(cos, keys, self.params.keep, self.params.seed)
        m_sorted, partner_sorted = max_earlier(x[order])
        m = np.empty(n)
        m[order] = m_sorted
        partner = np.full(n, -1, np.int64)
        has = partner_sorted >= 0
        partner[order[has]] = order[partner_sorted[has]]
        shards = rows.column(S.SRC_SHARD).to_pylist()
        index = rows.column(S.SRC_INDEX).to_pylist()
        nearest = [None if p < 0 else {S.KEY: keys[p], S.SRC_SHARD: shards[p], S.SRC_INDEX: index[p]}
                   for p in partner]
        id_col, cos_col, m_col, near_col = self.writes
        columns = {id_col: pa.array(np.full(n, g, np.int32)), cos_col: pa.array(cos),
                   m_col: pa.array(m.astype(np.float32), mask=partner < 0),
                   near_col: pa.array(nearest, S.NEAREST_TYPE)}
        return Decision(np.ones(n, dtype=bool), None, columns)

    def describe(self) -> dict[str, Any]:
        return {"clusters": None if self.centroids is None else int(len(self.centroids))}


class SemDedupCut(RankSieve):
    name: ClassVar[str] = "semdedup"
    Params: ClassVar[type[CutParams]] = CutParams
    reason: ClassVar[str] = S.Reason.SEMDEDUP_DUPLICATE

    def __init__(self, params: CutParams):
        super().__init__(params)
        self.params: CutParams = params
        self.reads = m_columns(params.op)

    def score(self, rows: pa.Table) -> np.ndarray:
        m = rows.column(self.reads[0]).to_numpy(zero_copy_only=False)
        return np.where(np.isnan(m), NO_EARLIER, -m).astype(np.float32)

    def threshold(self) -> float | None:
        eps = self.params.eps
        return None if eps is None else float32_ceil(eps - 1.0)  # keep −M >= −(1−ε), i.e. drop M > 1 − ε

    def budget(self, pool: int) -> int:
        return keep_count(self.params.keep_fraction, pool)

    def drop_details(self, rows: pa.Table, score: np.ndarray, keep: np.ndarray,
                     cutoff: float | None) -> list[str | None]:
        nearest = rows.column(self.reads[1]).to_pylist()
        out: list[str | None] = [None] * len(keep)
        for i in np.flatnonzero(~np.asarray(keep)):
            near = nearest[i]
            if near is None:
                out[i] = "first of its cluster, outside the keep_fraction"
            else:
                out[i] = (f"near-duplicate of key {near[S.KEY]} ({near[S.SRC_SHARD]}#{near[S.SRC_INDEX]}, "
                          f"cos {-float(score[i]):.3f})")
        return out

    def describe(self) -> dict[str, Any]:
        return {"eps": self.params.eps, "keep_fraction": self.params.keep_fraction}
