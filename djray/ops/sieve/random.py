"""random: a seeded uniform sample of exactly n = round-half-up(keep_fraction · pool) rows.

Rows are ranked by u = blake2b(seed, key) as a uint64 (smallest first), so the sample depends only on the keys and
the seed — not on blocks, workers or shard order. Runtime score: the top 24 bits of u, inverted (exact in float32);
rows tied on those bits are ordered by the full u, then the key.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from djray import schema as S
from djray.ops.sieve.base import RankSieve, SieveParams, keep_count, stable_hash64

_TOP_BITS = 24


class RandomParams(SieveParams):
    op: Literal["random"] = "random"
    keep_fraction: float = Field(gt=0.0, le=1.0)
    seed: int = 0


class RandomSieve(RankSieve):
    name: ClassVar[str] = "random"
    Params: ClassVar[type[RandomParams]] = RandomParams
    reason: ClassVar[str] = S.Reason.NOT_SAMPLED

    def _u(self, rows: pa.Table) -> np.ndarray:
        return stable_hash64(self.params.seed, rows.column(S.KEY).to_pylist())

    def score(self, rows: pa.Table) -> np.ndarray:
        top = (self._u(rows) >> np.uint64(64 - _TOP_BITS)).astype(np.int64)
        return ((1 << _TOP_BITS) - 1 - top).astype(np.float32)

    def budget(self, pool: int) -> int:
        return keep_count(self.params.keep_fraction, pool)

    def tie_break(self, rows: pa.Table) -> list:
        return [pa.array(self._u(rows), pa.uint64()), rows.column(S.KEY)]

    def drop_detail(self, score: float, cutoff: float | None) -> str:
        return f"outside the seeded sample (keep_fraction {self.params.keep_fraction}, seed {self.params.seed})"
