"""The sieve contract: a sample-level governor that keeps or drops whole rows from their signals.

A sieve never imports Ray and never sees image bytes. The runtime (`djray.runtime.select`) runs it over the signals
store; the same object runs in-process on a table (`run_in_process`), which is what unit tests and notebooks use.

Two kinds, by how much of the pool one decision needs:

* `GroupSieve` — `group(rows)` gives an int64 per row; rows with equal group values are decided together by
  `select(group)`, which sees that group's alive rows sorted by row id. A constant group means "the whole pool in one
  task" (sequential algorithms); a hash of a column means independent buckets (dedup); a cluster id means per-cluster
  work. `fit` (optional) learns small global state (centroids, a d×d matrix) from a seeded sample or a full scan.
* `RankSieve` — a per-row `score` (float32, higher is better) and either a `threshold` (keep score >= t) or an exact
  `budget(pool)` = n rows kept, the top n by (score desc, then `tie_break` asc). The runtime finds the top n with 12
  bytes per row gathered (row id + score) and a second small pass over the rows tied at the cut-off.

Every row a sieve sees has the runtime's columns `_row_id` (shard order << 32 | src_index), `key`, `src_shard` and
`src_index`, plus the signal columns it declares in `reads`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from djray import schema as S
from djray.ops.base import Params

ROW_ID = "_row_id"  # int64: shard order << 32 | src_index — total order of the pool, 8 bytes instead of a path
GROUP = "_group"  # int64: the group value of the rows a GroupSieve's `select` is given
RUNTIME_COLUMNS = (ROW_ID, S.KEY, S.SRC_SHARD, S.SRC_INDEX)


class SieveParams(Params):
    """Base of every sieve's parameters (`op` is the discriminator in the config's `sieve:` list)."""

    op: str

    def kmeans_tags(self) -> tuple[str, ...]:
        """One tag per k-means this sieve runs (its published cluster columns are prefixed by the tag when a
        selection runs more than one k-means)."""
        return ()

    def steps(self, prefixed: bool) -> list[SieveParams]:
        """The runtime steps this sieve runs as (most sieves: itself). A sieve needing a global cut over values
        computed per group (SemDeDup's M) runs as two steps: the first publishes the values, the second cuts."""
        return [self]


@dataclass(frozen=True)
class Decision:
    """What a sieve decided for the rows it was given (same order, same length)."""

    keep: np.ndarray  # bool[n]
    detail: list[str | None] | None = None  # per row; read for dropped rows only
    columns: Mapping[str, pa.Array] = field(default_factory=dict)  # published signals, one value per row


class Sieve:
    name: ClassVar[str]
    Params: ClassVar[type[SieveParams]]
    reads: ClassVar[tuple[str, ...]] = ()  # signal columns, besides RUNTIME_COLUMNS
    writes: ClassVar[tuple[str, ...]] = ()  # published columns (declared in schema.PUBLISHED_FIELDS)
    reason: ClassVar[str]  # stable reject reason for dropped rows; stage is "sieve:<name>"
    fit_rows: ClassVar[Literal["none", "sample", "scan"]] = "none"

    def __init__(self, params: SieveParams):
        self.params = params

    @property
    def stage(self) -> str:
        return S.Stage.sieve(self.params.op)  # the configured op: d4's SemDeDup steps report as sieve:d4

    def sample_size(self, pool: int) -> int:
        """Rows `fit` wants when `fit_rows == "sample"` (a seeded sample of the alive pool)."""
        return pool

    def fit(self, rows: Iterable[pa.Table]) -> None:
        """Learn small global state; `rows` is a seeded sample or a full scan, in a deterministic order."""

    def describe(self) -> dict[str, Any]:
        """What the manifest records about this step beyond its parameters (e.g. a derived threshold)."""
        return {}


class GroupSieve(Sieve):
    needs_group_sizes: ClassVar[bool] = False  # True: `plan(sizes)` is called before any `select`

    def group(self, rows: pa.Table) -> np.ndarray:
        raise NotImplementedError

    def plan(self, sizes: dict[int, int]) -> None:
        """The number of alive rows in every group, once, before any `select` (only when `needs_group_sizes`):
        whole-pool quotas per group (cluster sampling) need them. O(#groups) state."""

    def select(self, rows: pa.Table) -> Decision:
        """One group's alive rows sorted by row id; the runtime adds the group value as column `_group`."""
        raise NotImplementedError


class RankSieve(Sieve):
    def score(self, rows: pa.Table) -> np.ndarray:
        """float32 per row, higher is better (NaN is not allowed)."""
        raise NotImplementedError

    def threshold(self) -> float | None:
        """Keep rows with score >= this value (no global gather); None → use `budget`."""
        return None

    def budget(self, pool: int) -> int:
        """Exact number of rows to keep out of `pool` alive rows."""
        raise NotImplementedError

    def tie_break(self, rows: pa.Table) -> list[pa.Array | np.ndarray]:
        """Sort keys (ascending) among rows tied on score at the cut-off. Default: the key (unique after key_dedup)."""
        return [rows.column(S.KEY)]

    def drop_detail(self, score: float, cutoff: float | None) -> str:
        return f"score {score:.6g} below the cut-off {cutoff:.6g}" if cutoff is not None else f"score {score:.6g}"

    def drop_details(self, rows: pa.Table, score: np.ndarray, keep: np.ndarray,
                     cutoff: float | None) -> list[str | None]:
        """Detail per row (None for kept rows); override when a detail needs the row's other columns."""
        return [None if k else self.drop_detail(float(s), cutoff) for k, s in zip(keep, score)]

    def publish(self, rows: pa.Table, score: np.ndarray) -> dict[str, pa.Array]:
        """Columns in `writes`, one value per row (default: none)."""
        return {}


def float32_ceil(t: float) -> float:
    """The smallest float32 >= t, as a Python float: `score >= float32_ceil(t)` on float32 scores is exactly
    `score >= t` (the runtime compares float32 scores with a float32 cut-off)."""
    f = np.float32(t)
    if float(f) < t:
        f = np.nextafter(f, np.float32(np.inf))
    return float(f)


def keep_count(fraction: float, pool: int) -> int:
    """n = round-half-up(f · pool): exact, and the same rule everywhere (0.5 · 5 → 3)."""
    return int(np.floor(fraction * pool + 0.5))


def stable_hash64(seed: int, values: Iterable[str]) -> np.ndarray:
    """uint64 per value from blake2b(seed, value): the same in every process, block and shard order."""
    prefix = f"{int(seed)}\x1f".encode()
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(prefix + v.encode("utf-8"), digest_size=8).digest(), "little")
         for v in values), dtype=np.uint64)


def hash_order(seed: int, keys: list[str]) -> np.ndarray:
    """Positions in (blake2b(seed, key), key) ascending order: one fixed order whatever the blocks, workers or
    shard order."""
    table = pa.table({"u": pa.array(stable_hash64(seed, keys), pa.uint64()), "k": pa.array(keys, pa.string())})
    return pc.sort_indices(table, sort_keys=[("u", "ascending"), ("k", "ascending")]).to_numpy()


def bucket_of(values: pa.Array | pa.ChunkedArray, buckets: int) -> np.ndarray:
    """int64 bucket in [0, buckets) of each string, from a stable hash: equal strings share a bucket."""
    return (stable_hash64(0, values.to_pylist()) % np.uint64(buckets)).astype(np.int64)


def sort_by_row_id(rows: pa.Table) -> pa.Table:
    return rows.sort_by([(ROW_ID, "ascending")])


def top_n_mask(score: np.ndarray, n: int, tie_keys: list[Any]) -> np.ndarray:
    """Exact top-n in memory: score descending, then tie_keys ascending (the rule the runtime reproduces at scale)."""
    keep = np.zeros(score.size, dtype=bool)
    if n >= score.size:
        keep[:] = True
    elif n > 0:
        cols = {"score": pa.array(np.asarray(score, dtype=np.float64))}
        cols.update({f"t{i}": k if isinstance(k, (pa.Array, pa.ChunkedArray)) else pa.array(k)
                     for i, k in enumerate(tie_keys)})
        order = pc.sort_indices(pa.table(cols), sort_keys=[("score", "descending")]
                                + [(f"t{i}", "ascending") for i in range(len(tie_keys))])
        keep[order.to_numpy()[:n]] = True
    return keep


def alive(rows: pa.Table) -> pa.Table:
    """Rows of a signals table that phase A kept (its reject reason is null)."""
    return rows.filter(pc.is_null(rows.column(S.REASON))) if S.REASON in rows.column_names else rows


def first_of_each(rows: pa.Table, column: str, detail: str) -> Decision:
    """Keep the first row (by row id) of each distinct value of `column`; `detail` is formatted for each dropped row
    with the survivor's {key}, {shard} and {index}."""
    rows = sort_by_row_id(rows) if not _sorted(rows) else rows
    values = rows.column(column).to_pylist()
    first: dict[Any, int] = {}
    keep = np.ones(len(values), dtype=bool)
    details: list[str | None] = [None] * len(values)
    keys, shards, index = (rows.column(c).to_pylist() for c in (S.KEY, S.SRC_SHARD, S.SRC_INDEX))
    for i, v in enumerate(values):
        j = first.setdefault(v, i)
        if j != i:
            keep[i] = False
            details[i] = detail.format(key=keys[j], shard=shards[j], index=index[j])
    return Decision(keep, details)


def _sorted(rows: pa.Table) -> bool:
    ids = rows.column(ROW_ID).to_numpy()
    return bool(ids.size < 2 or np.all(ids[1:] > ids[:-1]))


def sample_seed(sieve: Sieve) -> int:
    return int(getattr(sieve.params, "seed", 0))


def sample_filter(rows: pa.Table, seed: int, fraction: float) -> pa.Table:
    """The rows of a seeded Bernoulli sample (u = hash(seed, key) / 2^64 < fraction) with their `_u` column: the same
    rows whatever the blocks, workers or shard order. `sample_order` puts (pieces of) a sample in its fixed order."""
    u = stable_hash64(seed, rows.column(S.KEY).to_pylist())
    if fraction < 1.0:
        mask = u < np.uint64(min(int(fraction * 2.0**64), 2**64 - 1))
        rows, u = rows.filter(pa.array(mask)), u[mask]
    return rows.append_column(SAMPLE_U, pa.array(u, pa.uint64()))


def sample_order(pieces: list[pa.Table]) -> pa.Table:
    """Sampled rows sorted by (u, key), `_u` dropped."""
    table = pa.concat_tables(pieces)
    return table.sort_by([(SAMPLE_U, "ascending"), (S.KEY, "ascending")]).drop_columns([SAMPLE_U])


SAMPLE_U = "_u"
