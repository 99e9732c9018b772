"""clip_score: keep rows whose CLIP image-text cosine is high (seed-algorithms §7.3, DataComp's CLIP-score filter).

`min_score`: keep clip_score >= min_score (per row, no gather). `keep_fraction`: keep EXACTLY
n = round-half-up(f · pool) rows, the top n by (clip_score descending, key ascending) over the whole pool — not an
approximate quantile: the runtime gathers 12 bytes per row (row id + score) and settles ties at the cut-off by key.
The score is the phase-A signal `clip_score` (float32), so a decision is checkable from the stored column alone.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from djray import schema as S
from djray.ops.sieve.base import RankSieve, SieveParams, float32_ceil, keep_count


def clip_scores(rows: pa.Table) -> np.ndarray:
    """The rows' clip_score as float32, a missing one as -inf (ranks last, never passes a threshold)."""
    return np.asarray(pc.fill_null(rows.column(S.CLIP_SCORE), -np.inf).to_numpy(), dtype=np.float32)


class ClipScoreParams(SieveParams):
    op: Literal["clip_score"] = "clip_score"
    min_score: float | None = Field(None, ge=-1.0, le=1.0)
    keep_fraction: float | None = Field(None, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _one_rule(self) -> ClipScoreParams:
        if (self.min_score is None) == (self.keep_fraction is None):
            raise ValueError("give exactly one of min_score or keep_fraction")
        return self


class ClipScoreSieve(RankSieve):
    name: ClassVar[str] = "clip_score"
    Params: ClassVar[type[ClipScoreParams]] = ClipScoreParams
    reads: ClassVar[tuple[str, ...]] = (S.CLIP_SCORE,)
    reason: ClassVar[str] = S.Reason.LOW_CLIP_SCORE

    def score(self, rows: pa.Table) -> np.ndarray:
        return clip_scores(rows)

    def threshold(self) -> float | None:
        t = self.params.min_score
        return None if t is None else float32_ceil(t)

    def budget(self, pool: int) -> int:
        return keep_count(self.params.keep_fraction, pool)

    def drop_detail(self, score: float, cutoff: float | None) -> str:
        if self.params.min_score is not None:
            return f"clip_score {score:.4f} < min_score {self.params.min_score}"
        return f"clip_score {score:.4f} outside the top {self.params.keep_fraction} (cut-off {cutoff:.4f})"

    def describe(self) -> dict[str, Any]:
        return {"rule": "min_score" if self.params.min_score is not None else "keep_fraction"}
