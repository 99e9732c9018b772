"""d2pruning: message passing on a kNN graph (seed-algorithms §7.6; adymaharana/d2pruning `select_d2_datacomp.py`).

1. Node score s_i = max(clip_score + 0.115, 1e-7).
2. kNN graph on the chosen features (`image`, `text`, or `image_text` = both L2-normalised and concatenated):
   directed, the k nearest OTHER rows by squared Euclidean distance d_ij. Up to `flat_max_rows` rows per group the
   graph is exact (faiss `IndexFlatL2` candidates, re-ranked in float64, ties by key); above it faiss `IndexIVFPQ`
   as the reference (nlist 100, m 16, 8 bits, trained on a seeded 2 % sample, d minus the first hit's distance) —
   approximate, said so in the manifest.
3. Forward: s'_i = s_i + Σ_{j ∈ kNN(i)} exp(−γ_f d_ij) · s_j.
4. Reverse (selection): repeatedly take the row of highest current s' (ties: smaller key); for each of ITS k
   neighbours j: s'_j ← s'_j − exp(−γ_r d_ij) · s'_i; stop at n rows. Scores only decrease, so a lazy max-heap
   (pop, re-check a stale score, re-push) picks exactly what the eager max picks.

`partition: none` (exact): the whole pool is one group (one task), refused above `max_rows_per_group` rows;
`partition: cluster`: one graph per spherical k-means cluster of the CLIP image embedding, budgets ∝ cluster size
(largest remainder) — cross-cluster edges are lost, so the manifest labels it approximate.
n = round-half-up(keep_fraction · pool). Publishes `d2_score` (s' after the forward pass).
"""

from __future__ import annotations

import heapq
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from djray import schema as S
from djray.ops.sieve import kmeans as K
from djray.ops.sieve.base import GROUP, Decision, GroupSieve, keep_count, stable_hash64
from djray.ops.sieve.clip_score import clip_scores
from djray.ops.sieve.d4 import largest_remainder

OFFSET, FLOOR = 0.115, 1e-7
CANDIDATES = 8  # extra flat-index candidates re-ranked in float64
FEATURES = {"image": (S.CLIP_IMAGE_EMBEDDING,), "text": (S.CLIP_TEXT_EMBEDDING,),
            "image_text": (S.CLIP_IMAGE_EMBEDDING, S.CLIP_TEXT_EMBEDDING)}


class D2PruningParams(K.KMeansFields):
    op: Literal["d2pruning"] = "d2pruning"
    keep_fraction: float = Field(gt=0.0, le=1.0)
    k: int = Field(1, ge=1)
    gamma_forward: float = Field(1.0, ge=0.0)
    gamma_reverse: float = Field(1.0, ge=0.0)
    features: Literal["image", "text", "image_text"] = "image_text"
    partition: Literal["none", "cluster"] = "none"
    max_rows_per_group: int = Field(1_000_000, ge=1)
    flat_max_rows: int = Field(200_000, ge=1)
    embedding: Literal["dino", "clip_image"] = "clip_image"  # what `partition: cluster` clusters


def features(rows: pa.Table, kind: str) -> np.ndarray:
    return np.hstack([K.unit_rows(rows, c) for c in FEATURES[kind]])


def exact_knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k nearest other rows by squared L2 in float64 (ties: smaller index): float32 faiss candidates, re-ranked."""
    import faiss

    n = len(x)
    k = min(k, n - 1)
    if k <= 0:
        return np.zeros((n, 0), np.int64), np.zeros((n, 0))
    c = min(n, k + 1 + CANDIDATES)
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(np.ascontiguousarray(x, dtype=np.float32))
    d32, cand = index.search(np.ascontiguousarray(x, dtype=np.float32), c)
    nbr, dist = np.zeros((n, k), np.int64), np.zeros((n, k))
    for i in range(n):
        js = cand[i][(cand[i] >= 0) & (cand[i] != i)]
        d = ((x[js] - x[i]) ** 2).sum(axis=1)
        # candidates cover the true k nearest unless the list's last float32 distance is near the k-th best
        if c < n and d32[i, -1] - np.sort(d)[k - 1] < K.TIE_MARGIN * 4:
            js = np.r_[np.arange(i), np.arange(i + 1, n)]
            d = ((x[js] - x[i]) ** 2).sum(axis=1)
        order = np.lexsort((js, d))[:k]
        nbr[i], dist[i] = js[order], d[order]
    return nbr, dist


def ivfpq_knn(x: np.ndarray, k: int, keys: list[str], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference's approximate graph: IVF-PQ (nlist 100, m 16, 8 bits) on a seeded 2 % training sample."""
    import faiss

    n, d = x.shape
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    quantizer = faiss.IndexFlatL2(d)
    index = faiss.IndexIVFPQ(quantizer, d, 100, 16, 8)
    u = stable_hash64(seed, keys)
    train = np.sort(np.argsort(u)[:min(n, max(int(0.02 * n), 10_000))])
    index.train(x32[train])
    index.add(x32)
    dist, nbr = index.search(x32, k + 1)
    return nbr[:, 1:].astype(np.int64), (dist[:, 1:] - dist[:, :1]).astype(np.float64)


def forward(s: np.ndarray, nbr: np.ndarray, dist: np.ndarray, gamma: float) -> np.ndarray:
    valid = nbr >= 0
    w = np.where(valid, np.exp(-gamma * dist), 0.0)
    return s + (w * s[np.where(valid, nbr, 0)]).sum(axis=1)


def reverse_select(score: np.ndarray, nbr: np.ndarray, dist: np.ndarray, gamma: float, n: int) -> np.ndarray:
    """Positions picked by the reverse message passing (lazy max-heap; ties: smaller position)."""
    s = score.astype(np.float64).copy()
    heap = [(-v, i) for i, v in enumerate(s)]
    heapq.heapify(heap)
    picked = np.zeros(len(s), bool)
    count = 0
    while heap and count < n:
        neg, i = heapq.heappop(heap)
        if picked[i]:
            continue
        if -neg != s[i]:  # stale: its score fell since it was pushed
            heapq.heappush(heap, (-s[i], i))
            continue
        picked[i] = True
        count += 1
        for j, d in zip(nbr[i], dist[i]):
            if j >= 0:
                s[j] -= np.exp(-gamma * d) * s[i]
                if not picked[j]:
                    heapq.heappush(heap, (-s[j], int(j)))
    return picked


class D2PruningSieve(K.KMeansFit, GroupSieve):
    name: ClassVar[str] = "d2pruning"
    Params: ClassVar[type[D2PruningParams]] = D2PruningParams
    reason: ClassVar[str] = S.Reason.D2_NOT_SELECTED
    writes: ClassVar[tuple[str, ...]] = ("d2_score",)
    needs_group_sizes: ClassVar[bool] = True

    def __init__(self, params: D2PruningParams):
        super().__init__(params)
        self.params: D2PruningParams = params
        cluster = params.partition == "cluster"
        self.fit_rows = "sample" if cluster else "none"
        self.reads = tuple(dict.fromkeys((*FEATURES[params.features], S.CLIP_SCORE)
                                         + ((params.column,) if cluster else ())))
        self.quota: dict[int, int] = {}
        self.ivfpq_groups = 0

    def group(self, rows: pa.Table) -> np.ndarray:
        if self.params.partition == "none":
            return np.zeros(rows.num_rows, np.int64)
        return self.assign_rows(rows)[0]

    def plan(self, sizes: dict[int, int]) -> None:
        largest = max(sizes.values(), default=0)
        if self.params.partition == "none" and largest > self.params.max_rows_per_group:
            raise ValueError(f"d2pruning: {largest:,} rows exceed max_rows_per_group "
                             f"{self.params.max_rows_per_group:,}; use partition: cluster")
        self.ivfpq_groups = sum(1 for v in sizes.values() if v > self.params.flat_max_rows)
        self.quota = largest_remainder(sizes, keep_count(self.params.keep_fraction, sum(sizes.values())))

    def select(self, rows: pa.Table) -> Decision:
        g = int(rows.column(GROUP)[0].as_py())
        n = rows.num_rows
        by_key = pc.sort_indices(rows.column(S.KEY)).to_numpy()  # positions in key order: ties go to smaller keys
        sorted_rows = rows.take(pa.array(by_key))
        x = features(sorted_rows, self.params.features)
        clip = clip_scores(sorted_rows).astype(np.float64)
        s = np.maximum(clip + OFFSET, FLOOR)
        if n <= self.params.flat_max_rows:
            nbr, dist = exact_knn(x, self.params.k)
        else:
            nbr, dist = ivfpq_knn(x, self.params.k, sorted_rows.column(S.KEY).to_pylist(), self.params.seed)
        fwd = forward(s, nbr, dist, self.params.gamma_forward)
        picked = reverse_select(fwd, nbr, dist, self.params.gamma_reverse, self.quota.get(g, 0))
        keep, score = np.zeros(n, bool), np.zeros(n, np.float32)
        keep[by_key], score[by_key] = picked, fwd.astype(np.float32)
        detail = f"not selected by the reverse message passing ({self.quota.get(g, 0)} of {n} rows of group {g})"
        return Decision(keep, [None if k else detail for k in keep], {"d2_score": pa.array(score)})

    def describe(self) -> dict[str, Any]:
        why = []
        if self.params.partition == "cluster":
            why.append("one graph per k-means cluster: cross-cluster edges are lost")
        if self.ivfpq_groups:
            why.append(f"{self.ivfpq_groups} group(s) above flat_max_rows used an IVF-PQ graph")
        return {"partition": self.params.partition, "exact": not why, "approximate": "; ".join(why) or None,
                "groups": len(self.quota), "budget": sum(self.quota.values())}
