"""key_dedup: one row per key. The first occurrence by (shard order, index) is kept, every later one dropped.

Only rows still alive compete (a copy rejected in phase A, say a corrupt image, does not shadow a later usable copy).
It always runs as the first step: keys are unique in the output (ARCHITECTURE §2), and later sieves tie-break on them.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa

from djray import schema as S
from djray.ops.sieve.base import GroupSieve, SieveParams, bucket_of, first_of_each

BUCKETS = 4096  # hash buckets: equal keys share one; a bucket is one `select` call


class KeyDedupParams(SieveParams):
    op: Literal["key_dedup"] = "key_dedup"


class KeyDedup(GroupSieve):
    name: ClassVar[str] = "key_dedup"
    Params: ClassVar[type[KeyDedupParams]] = KeyDedupParams
    reason: ClassVar[str] = S.Reason.DUPLICATE_KEY

    def group(self, rows: pa.Table) -> np.ndarray:
        return bucket_of(rows.column(S.KEY), BUCKETS)

    def select(self, rows: pa.Table):
        return first_of_each(rows, S.KEY, "key first seen at {shard}#{index}")
