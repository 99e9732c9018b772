"""vas: Variance Alignment Score after a CLIP-score filter (seed-algorithms §5; ypwang61/VAS `baselines/vas.py`).

VAS_i = f_iᵀ S f_i with f_i the L2-normalised CLIP image embedding and S the UNcentred second moment
(1/M) Σ g gᵀ of a target set, in float64. Exactly as the reference code, sequentially:

1. keep the top n_clip = int(N · clip_fraction) rows of the WHOLE pool (N rows) by clip_score (ties: key);
2. among them keep the top n_vas = int(N · vas_fraction) by VAS — relative to the ORIGINAL pool, not the survivors.

`target: {kind: reference, path | images}` — S from a reference set: `path`, a Parquet of embeddings
(`write_reference`), or `images`, reference images the job embeds itself with its `clip:` section (the runtime does
that before phase B: djray.runtime.reference, and binds the Parquet it wrote). The file must be of the job's CLIP
model and weights (vas_reference.py says what is checked). Fixed S is per-row: a one-pass scan (clip scores,
12 bytes per row) finds the CLIP cut, then VAS is a ranked step (exact top n_vas, float32 score, key tie-break).

`target: {kind: pool, iterations: T}` — VAS-D: the first S is over the whole pool BEFORE the CLIP filter; then
T times: score the kept rows with the current S, keep the top (n − chunk), chunk = ceil((n0 − n_vas) / T), the last
iteration exactly n_vas; S follows the kept set by an exact float64 downdate (Σ f fᵀ of the removed rows subtracted,
never recomputed). T = 1 is VAS(traindata). The loop holds the CLIP survivors' embeddings in one task (float32).

Publishes `vas` (float32): f S f under S as given (fixed) or the S of VAS-D's last iteration.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Annotated, Any, ClassVar, Literal, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from djray import schema as S
from djray.ops.base import Params
from djray.ops.sieve import kmeans as K
from djray.ops.sieve.base import ROW_ID, RankSieve, SieveParams
from djray.ops.sieve.clip_score import clip_scores
from djray.ops.sieve.vas_reference import (BLOCK, ReferenceTarget, read_reference, second_moment_sum,
                                           write_reference)

__all__ = ["VasParams", "VasSieve", "PoolTarget", "ReferenceTarget", "write_reference"]


class PoolTarget(Params):
    kind: Literal["pool"] = "pool"
    iterations: int = Field(1, ge=1)


class VasParams(SieveParams):
    op: Literal["vas"] = "vas"
    clip_fraction: float = Field(0.3, gt=0.0, le=1.0)
    vas_fraction: float = Field(0.2, gt=0.0, le=1.0)
    target: Annotated[Union[ReferenceTarget, PoolTarget], Field(discriminator="kind")]

    @model_validator(mode="after")
    def _fractions(self) -> VasParams:
        if self.vas_fraction > self.clip_fraction:
            raise ValueError(f"vas_fraction {self.vas_fraction} exceeds clip_fraction {self.clip_fraction}")
        return self


def ref_count(fraction: float, pool: int) -> int:
    """int(N · f), as the reference code counts (not round-half-up)."""
    return int(pool * fraction)


def vas_scores(x: np.ndarray, s: np.ndarray) -> np.ndarray:
    """f_iᵀ S f_i per row, float64."""
    out = np.empty(len(x))
    for b in range(0, len(x), BLOCK):
        xb = np.asarray(x[b:b + BLOCK], dtype=np.float64)
        out[b:b + len(xb)] = np.einsum("ij,ij->i", xb @ s, xb)
    return out


def clip_top(row_id: np.ndarray, clip: np.ndarray, key: pa.ChunkedArray, n: int) -> tuple[np.ndarray, float, np.ndarray]:
    """The exact top n by (clip_score desc, key asc): (their positions, cut-off c, sorted row ids of the kept rows
    tied at c). A row is in the top iff score > c, or score == c and its row id is in the tie list."""
    order = pc.sort_indices(pa.table({"s": clip, "k": key}),
                            sort_keys=[("s", "descending"), ("k", "ascending")]).to_numpy()
    top = order[:n]
    if n >= len(clip):
        return top, -math.inf, np.zeros(0, np.int64)
    if n <= 0:
        return top, math.inf, np.zeros(0, np.int64)
    cut = float(clip[top[-1]])
    return top, cut, np.sort(row_id[top[clip[top] == np.float32(cut)]])


def in_top(rows: pa.Table, clip: np.ndarray, cut: float, ties: np.ndarray) -> np.ndarray:
    tied = (clip == np.float32(cut)) & np.isin(rows.column(ROW_ID).to_numpy(), ties)
    return (clip > cut) | tied


class VasSieve(RankSieve):
    name: ClassVar[str] = "vas"
    Params: ClassVar[type[VasParams]] = VasParams
    reads: ClassVar[tuple[str, ...]] = (S.CLIP_IMAGE_EMBEDDING, S.CLIP_SCORE)
    writes: ClassVar[tuple[str, ...]] = (S.VAS,)
    reason: ClassVar[str] = S.Reason.LOW_VAS
    fit_rows: ClassVar[Literal["none", "sample", "scan"]] = "scan"

    def __init__(self, params: VasParams):
        super().__init__(params)
        self.params: VasParams = params
        self.s: np.ndarray | None = None  # the S decisions and `vas` use
        self.s_after: np.ndarray | None = None  # VAS-D: S of the final kept set (the last downdate's result)
        self.clip_cut = -math.inf  # keep clip_score > cut, plus the tied rows in clip_ties (row ids, sorted)
        self.clip_ties = np.zeros(0, np.int64)
        self.kept = np.zeros(0, np.int64)  # VAS-D: row ids kept (sorted); dropped survivors: the iteration
        self.survivors = np.zeros(0, np.int64)
        self.dropped_at = np.zeros(0, np.int32)
        self.info: dict[str, Any] = {}
        self._memo: tuple[pa.Table, np.ndarray] | None = None  # (table, its f S f): see _vas

    # ---- fit: the CLIP cut over the whole pool, S, and (VAS-D) the whole loop -------------------------------------
    def fit(self, rows: Iterable[pa.Table]) -> None:
        pool = isinstance(self.params.target, PoolTarget)
        ids, scores, keys, embs = [], [], [], []
        total = None
        for t in rows:
            if t.num_rows == 0:
                continue
            ids.append(t.column(ROW_ID).to_numpy())
            scores.append(clip_scores(t))
            keys.append(t.column(S.KEY))
            if pool:
                x = K.unit_rows(t, S.CLIP_IMAGE_EMBEDDING)
                total = second_moment_sum(x) if total is None else total + second_moment_sum(x)
                embs.append(x.astype(np.float32))
        row_id = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        n = row_id.size
        clip = np.concatenate(scores) if scores else np.zeros(0, np.float32)
        key = pa.chunked_array(keys, pa.string()) if keys else pa.chunked_array([], pa.string())
        n_clip, n_vas = ref_count(self.params.clip_fraction, n), ref_count(self.params.vas_fraction, n)
        top, self.clip_cut, self.clip_ties = clip_top(row_id, clip, key, n_clip)
        self.info = {"pool": n, "n_clip": n_clip, "n_vas": n_vas,
                     "clip_cutoff": None if math.isinf(self.clip_cut) else self.clip_cut}
        if not pool:
            target = self.params.target
            model = target.model or target._job_model
            if model is None:
                raise ValueError("vas target: no CLIP model to check the reference against (set target.model)")
            path = target.reference_file()
            self.s, read = read_reference(path, model, target._job_weights, target._storage)
            self.info.update(target="reference", reference=path, model=model, **read)
            if target.images is not None:
                self.info.update(images=target.images, embedding=target._report)
            return
        x = np.concatenate(embs) if embs else np.zeros((0, 0), np.float32)
        surv = top[np.argsort(row_id[top])]  # the CLIP survivors in row-id order
        key_rank = np.empty(n, np.int64)
        key_rank[pc.sort_indices(key).to_numpy()] = np.arange(n)
        self._vas_d(x[surv], row_id[surv], key_rank[surv], total, n, n_vas)

    def _vas_d(self, x: np.ndarray, ids: np.ndarray, key_rank: np.ndarray, total: np.ndarray | None, n_pool: int,
               n_vas: int) -> None:
        iters = self.params.target.iterations
        d = x.shape[1] if x.size else 0
        s = total / n_pool if total is not None else np.zeros((d, d))
        n0 = len(ids)
        chunk = math.ceil((n0 - n_vas) / iters) if n0 > n_vas else 0
        kept = np.arange(n0)
        dropped_at = np.full(n0, -1, np.int32)
        # T = Σ f fᵀ of the kept set: formed once over the CLIP survivors, then only downdated
        t_sum = second_moment_sum(x) if n0 else np.zeros((d, d))
        for it in range(iters):  # iterations >= 1: `used` is always set
            used = s
            if kept.size == 0:
                break
            v = vas_scores(x[kept], s)
            target = n_vas if it == iters - 1 else max(n_vas, kept.size - chunk)
            rank = np.lexsort((key_rank[kept], -v))  # VAS descending, then key
            stay, go = np.sort(kept[rank[:target]]), kept[rank[target:]]
            dropped_at[go] = it
            if go.size:
                t_sum = t_sum - second_moment_sum(x[go])
                s = t_sum / stay.size if stay.size else np.zeros_like(t_sum)
            kept = stay
        self.s = used
        self.s_after = s
        self.kept = np.sort(ids[kept])
        self.survivors, self.dropped_at = ids, dropped_at
        self.info.update(target="pool", iterations=iters, chunk=chunk, n_survivors=n0)

    # ---- ranked step ---------------------------------------------------------------------------------------------
    def _in_clip(self, rows: pa.Table) -> np.ndarray:
        return in_top(rows, clip_scores(rows), self.clip_cut, self.clip_ties)

    def _vas(self, rows: pa.Table) -> np.ndarray:
        """f S f of the rows (memoised: score, drop_details and publish see the same table in turn)."""
        memo = self._memo
        if memo is None or memo[0] is not rows:
            v = vas_scores(K.unit_rows(rows, S.CLIP_IMAGE_EMBEDDING), self.s) if rows.num_rows else np.zeros(0)
            memo = self._memo = (rows, v)
        return memo[1]

    def score(self, rows: pa.Table) -> np.ndarray:
        if isinstance(self.params.target, PoolTarget):
            return np.isin(rows.column(ROW_ID).to_numpy(), self.kept).astype(np.float32)
        v = self._vas(rows).astype(np.float32)
        return np.where(self._in_clip(rows), v, np.float32(-np.inf)).astype(np.float32)

    def threshold(self) -> float | None:
        return 0.5 if isinstance(self.params.target, PoolTarget) else None

    def budget(self, pool: int) -> int:
        return ref_count(self.params.vas_fraction, pool)

    def drop_details(self, rows: pa.Table, score: np.ndarray, keep: np.ndarray,
                     cutoff: float | None) -> list[str | None]:
        out: list[str | None] = [None] * len(keep)
        drop = np.flatnonzero(~np.asarray(keep))
        if drop.size == 0:
            return out
        in_clip, clip, v = self._in_clip(rows), clip_scores(rows), self._vas(rows)
        ids = rows.column(ROW_ID).to_numpy()
        for i in drop:
            if not in_clip[i]:
                out[i] = (f"clip_score {clip[i]:.4f} outside the top {self.params.clip_fraction} of the pool "
                          f"(cut-off {self.clip_cut:.4f})")
            elif isinstance(self.params.target, PoolTarget):
                at = int(self.dropped_at[np.searchsorted(self.survivors, ids[i])])
                out[i] = f"VAS-D: removed at iteration {at + 1} of {self.params.target.iterations}"
            else:
                out[i] = f"vas {v[i]:.6g} outside the top {self.params.vas_fraction} of the pool (cut-off {cutoff:.6g})"
        return out

    def publish(self, rows: pa.Table, score: np.ndarray) -> dict[str, pa.Array]:
        v = self._vas(rows)
        self._memo = None  # publish is the last call on a table
        return {S.VAS: pa.array(v.astype(np.float32))}

    def describe(self) -> dict[str, Any]:
        return dict(self.info)
