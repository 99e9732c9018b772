"""infogrowth: a cleaner on image-text alignment, then online information gain (seed-algorithms §6;
NUS-HPC-AI-Lab/InfoGrowth `process_item`, `submodular_func`).

Runs as three steps (stage `sieve:infogrowth`):

1. Clean — align = clip_score = cos(CLIP image, CLIP text). `align_threshold: δ` keeps align ≥ δ; `align_quantile:
   q` drops exactly the round-half-up(q · pool) rows of lowest align (ties: key), and δ = the lowest align kept is
   the step record's `cutoff`. (The paper's δ = 0.4 is calibrated for BLIP features; CLIP cosines are lower.)
   `recaption: true` (§6.2's recaption): δ is decided first on the ORIGINAL aligns (as above), then every row with
   align < δ is re-captioned by the `text:` engine and its recaption embedded by the job's CLIP text tower, align' =
   cos(image, recaption) (`recaption_score`, published); keep iff align ≥ δ or align' ≥ δ — with a quantile,
   rows tied at δ are all kept (the rule is the threshold rule at that δ). A rescued row's text embedding is the
   recaption's for the gain step, and its caption the recaption in data/ (djray.runtime.recaption runs the pass).
2. Gain — items in a fixed order, u = blake2b(seed, key) ascending (ties: key); two hnswlib indices (space cosine:
   distance 1 − cos; M, ef_construction, ef from `hnsw`), image and text. For each item BEFORE inserting it:
   G_I = mean distance to its k' = min(#indexed, k) nearest indexed images, G_T the same for texts; an empty index
   gives (1, 1). Raw gain (G_I + G_T)/2 (`gain_raw`), then the item is inserted (single-threaded: multi-threaded
   inserts make the graph non-deterministic). `partition: none` is one index over the pool (one task, exact order);
   `partition: cluster` one instance per k-means cluster in parallel — cross-cluster neighbours are ignored, the
   manifest labels it approximate.
3. Normalise — gain = clip(gain_raw / q99, 0, 1) with q99 = numpy's (linear) 99th percentile of gain_raw over the
   pool (a scan of 4 bytes per row). With `keep_fraction` the exact top round-half-up(f · pool) rows by gain are
   kept (ties: key); without, every cleaned row is kept and `gain` feeds the trainer's samplers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from djray import schema as S
from djray.ops.base import Params
from djray.ops.sieve import kmeans as K
from djray.ops.sieve.base import Decision, GroupSieve, RankSieve, SieveParams, float32_ceil, hash_order, keep_count
from djray.ops.sieve.clip_score import clip_scores
from djray.ops.text.params import TextParams
from djray.ops.vision.clip_embed import ClipParams

GAIN_RAW = "gain_raw"


class HnswParams(Params):
    M: int = Field(48, ge=2)
    ef_construction: int = Field(100, ge=1)
    ef: int = Field(32, ge=1)


class InfoGrowthParams(K.KMeansFields):
    op: Literal["infogrowth"] = "infogrowth"
    align_threshold: float | None = Field(None, ge=-1.0, le=1.0)
    align_quantile: float | None = Field(None, ge=0.0, lt=1.0)
    k: int = Field(4, ge=1)
    hnsw: HnswParams = HnswParams()
    recaption: bool = False
    partition: Literal["none", "cluster"] = "none"
    keep_fraction: float | None = Field(None, gt=0.0, le=1.0)
    embedding: Literal["dino", "clip_image"] = "clip_image"  # what `partition: cluster` clusters

    @model_validator(mode="after")
    def _rules(self) -> InfoGrowthParams:
        if (self.align_threshold is None) == (self.align_quantile is None):
            raise ValueError("give exactly one of align_threshold or align_quantile")
        return self

    def steps(self, prefixed: bool) -> list[SieveParams]:
        kmeans = dict(n_clusters=self.n_clusters, embedding=self.embedding, seed=self.seed, niter=self.niter,
                      sample_per_centroid=self.sample_per_centroid)
        return [CleanParams(align_threshold=self.align_threshold, align_quantile=self.align_quantile,
                            recaption=self.recaption),
                GainParams(k=self.k, hnsw=self.hnsw, partition=self.partition, **kmeans),
                NormParams(keep_fraction=self.keep_fraction)]


class CleanParams(SieveParams):
    op: Literal["infogrowth"] = "infogrowth"
    align_threshold: float | None = None
    align_quantile: float | None = None
    recaption: bool = False
    # with recaption, the job's `text:` and `clip:` sections (JobConfig.steps fills them): they shape the recaptions,
    # so they are part of this step's fingerprint
    text: TextParams | None = None
    clip: ClipParams | None = None


class GainParams(K.KMeansFields):
    op: Literal["infogrowth"] = "infogrowth"
    k: int = 4
    hnsw: HnswParams = HnswParams()
    partition: Literal["none", "cluster"] = "none"
    embedding: Literal["dino", "clip_image"] = "clip_image"


class NormParams(SieveParams):
    op: Literal["infogrowth"] = "infogrowth"
    keep_fraction: float | None = None


class InfoGrowthClean(RankSieve):
    name: ClassVar[str] = "infogrowth"
    Params: ClassVar[type[CleanParams]] = CleanParams
    reads: ClassVar[tuple[str, ...]] = (S.CLIP_SCORE,)
    reason: ClassVar[str] = S.Reason.INFOGROWTH_MISALIGNED

    def __init__(self, params: CleanParams):
        super().__init__(params)
        self.params: CleanParams = params
        self.recaption = params.recaption
        self.writes = (S.RECAPTION_SCORE,) if params.recaption else ()

    def align(self, rows: pa.Table) -> np.ndarray:
        """The original alignment (δ of a quantile is decided on these)."""
        return clip_scores(rows)

    def score(self, rows: pa.Table) -> np.ndarray:
        """align, or max(align, align') once the runtime attached `recaption_score` (null: no recaption)."""
        align = self.align(rows)
        if not self.recaption or S.RECAPTION_SCORE not in rows.column_names:
            return align
        again = pc.fill_null(rows.column(S.RECAPTION_SCORE).cast(pa.float32()), -np.inf).to_numpy()
        return np.fmax(align, np.asarray(again, dtype=np.float32))

    def threshold(self) -> float | None:
        t = self.params.align_threshold
        return None if t is None else float32_ceil(t)

    def budget(self, pool: int) -> int:
        return pool - keep_count(self.params.align_quantile, pool)

    def drop_detail(self, score: float, cutoff: float | None) -> str:
        return f"alignment {score:.4f} below δ {cutoff:.4f}" if cutoff is not None else f"alignment {score:.4f}"

    def drop_details(self, rows: pa.Table, score: np.ndarray, keep: np.ndarray,
                     cutoff: float | None) -> list[str | None]:
        align = self.align(rows)
        again, code = (_column(rows, c) for c in (S.RECAPTION_SCORE, S.RECAPTION_CODE))
        out: list[str | None] = []
        for i, k in enumerate(keep):
            if k:
                out.append(None)
                continue
            detail = self.drop_detail(float(align[i]), cutoff)
            if again[i] is not None:
                detail += f"; recaption alignment {again[i]:.4f} also below δ"
            elif code[i] is not None:
                detail += f"; the recaption failed validation ({code[i]})"
            out.append(detail)
        return out

    def publish(self, rows: pa.Table, score: np.ndarray) -> dict[str, pa.Array]:
        if not self.recaption:
            return {}
        if S.RECAPTION_SCORE not in rows.column_names:
            return {S.RECAPTION_SCORE: pa.nulls(rows.num_rows, pa.float32())}
        return {S.RECAPTION_SCORE: rows.column(S.RECAPTION_SCORE).combine_chunks().cast(pa.float32())}

    def describe(self) -> dict[str, Any]:
        return {"rule": "align_threshold" if self.params.align_quantile is None else "align_quantile",
                "delta": self.params.align_threshold, "recaption": self.recaption}


def _column(rows: pa.Table, name: str) -> list[Any]:
    return rows.column(name).to_pylist() if name in rows.column_names else [None] * rows.num_rows


def online_gains(img: np.ndarray, txt: np.ndarray, k: int, hnsw: HnswParams) -> np.ndarray:
    """Raw gain of each row (rows in processing order), each against the rows before it (hnswlib, one thread)."""
    import hnswlib

    n = len(img)
    gains = np.ones(n)
    if n == 0:
        return gains
    indices = []
    for x in (img, txt):
        index = hnswlib.Index(space="cosine", dim=x.shape[1])
        index.init_index(max_elements=n, ef_construction=hnsw.ef_construction, M=hnsw.M, random_seed=100)
        index.set_ef(hnsw.ef)
        index.set_num_threads(1)
        indices.append(index)
    img32, txt32 = img.astype(np.float32), txt.astype(np.float32)
    for t in range(n):
        if t:
            kk = min(t, k)
            g = [float(index.knn_query(x[t:t + 1], k=kk, num_threads=1)[1].mean())
                 for index, x in zip(indices, (img32, txt32))]
            gains[t] = (g[0] + g[1]) / 2
        for index, x in zip(indices, (img32, txt32)):
            index.add_items(x[t:t + 1], np.array([t]), num_threads=1)
    return gains


class InfoGrowthGain(K.KMeansFit, GroupSieve):
    name: ClassVar[str] = "infogrowth"
    Params: ClassVar[type[GainParams]] = GainParams
    writes: ClassVar[tuple[str, ...]] = (GAIN_RAW,)
    reason: ClassVar[str] = S.Reason.INFOGROWTH_LOW_GAIN  # never drops

    def __init__(self, params: GainParams):
        super().__init__(params)
        self.params: GainParams = params
        cluster = params.partition == "cluster"
        self.fit_rows = "sample" if cluster else "none"
        self.reads = tuple(dict.fromkeys((S.CLIP_IMAGE_EMBEDDING, S.CLIP_TEXT_EMBEDDING)
                                         + ((params.column,) if cluster else ())))

    def group(self, rows: pa.Table) -> np.ndarray:
        if self.params.partition == "none":
            return np.zeros(rows.num_rows, np.int64)
        return self.assign_rows(rows)[0]

    def select(self, rows: pa.Table) -> Decision:
        order = hash_order(self.params.seed, rows.column(S.KEY).to_pylist())  # processing order
        ordered = rows.take(pa.array(order))
        raw = online_gains(K.unit_rows(ordered, S.CLIP_IMAGE_EMBEDDING), K.unit_rows(ordered, S.CLIP_TEXT_EMBEDDING),
                           self.params.k, self.params.hnsw)
        gain = np.empty(rows.num_rows, np.float32)
        gain[order] = raw
        return Decision(np.ones(rows.num_rows, bool), None, {GAIN_RAW: pa.array(gain)})

    def describe(self) -> dict[str, Any]:
        cluster = self.params.partition == "cluster"
        return {"partition": self.params.partition, "exact_order": True,
                "approximate": "one instance per k-means cluster: cross-cluster neighbours ignored" if cluster else None,
                "clusters": None if self.centroids is None else int(len(self.centroids))}


class InfoGrowthNorm(RankSieve):
    name: ClassVar[str] = "infogrowth"
    Params: ClassVar[type[NormParams]] = NormParams
    reads: ClassVar[tuple[str, ...]] = (GAIN_RAW,)
    writes: ClassVar[tuple[str, ...]] = (S.GAIN,)
    reason: ClassVar[str] = S.Reason.INFOGROWTH_LOW_GAIN
    fit_rows: ClassVar[Literal["none", "sample", "scan"]] = "scan"

    def __init__(self, params: NormParams):
        super().__init__(params)
        self.params: NormParams = params
        self.q99: float | None = None

    def fit(self, rows: Iterable[pa.Table]) -> None:
        raw = [t.column(GAIN_RAW).to_numpy(zero_copy_only=False) for t in rows if t.num_rows]
        self.q99 = float(np.percentile(np.concatenate(raw).astype(np.float64), 99)) if raw else None

    def score(self, rows: pa.Table) -> np.ndarray:
        raw = rows.column(GAIN_RAW).to_numpy(zero_copy_only=False).astype(np.float64)
        if not self.q99:
            return np.ones(len(raw), np.float32)
        return np.clip(raw / self.q99, 0.0, 1.0).astype(np.float32)

    def threshold(self) -> float | None:
        return -np.inf if self.params.keep_fraction is None else None

    def budget(self, pool: int) -> int:
        return keep_count(self.params.keep_fraction, pool)

    def publish(self, rows: pa.Table, score: np.ndarray) -> dict[str, pa.Array]:
        return {S.GAIN: pa.array(score, pa.float32())}

    def drop_detail(self, score: float, cutoff: float | None) -> str:
        return f"gain {score:.4f} outside the top {self.params.keep_fraction} (cut-off {cutoff:.4f})"

    def describe(self) -> dict[str, Any]:
        return {"q99": self.q99, "keep_fraction": self.params.keep_fraction}
