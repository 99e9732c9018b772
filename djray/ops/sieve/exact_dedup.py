"""exact_dedup: byte-identical images (same `img_sha256` of the original bytes) are kept once.

The survivor is the first copy by (shard order, index); the detail of each dropped row names it. Rows without a hash
(rejected before decode) never reach a sieve.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa

from djray import schema as S
from djray.ops.sieve.base import GroupSieve, SieveParams, bucket_of, first_of_each

BUCKETS = 4096


class ExactDedupParams(SieveParams):
    op: Literal["exact_dedup"] = "exact_dedup"


class ExactDedup(GroupSieve):
    name: ClassVar[str] = "exact_dedup"
    Params: ClassVar[type[ExactDedupParams]] = ExactDedupParams
    reads: ClassVar[tuple[str, ...]] = (S.IMG_SHA256,)
    reason: ClassVar[str] = S.Reason.DUPLICATE_IMAGE

    def group(self, rows: pa.Table) -> np.ndarray:
        return bucket_of(rows.column(S.IMG_SHA256), BUCKETS)

    def select(self, rows: pa.Table):
        return first_of_each(rows, S.IMG_SHA256, "same image bytes as key {key} ({shard}#{index})")
