"""A sieve from Python, in this process: `djray.sieve("semdedup", eps=0.07).select(table)`.

For a notebook: the signals of a run (`pd.read_parquet("OUTPUT/signals/")`, `pq.read_table(...)`) or any table with
a `key` and the columns the sieve reads. The parameters are the keys of one item of the config's `sieve:` list,
validated by the same typed config (a ConfigError names the key). The decisions are the pipeline's: the same
reference code (`djray.ops.sieve.inprocess`) over the rows in the pipeline's order (shard order, then `src_index`,
when the table has `src_shard` / `src_index`; else table order). Runs in memory: for a few million rows at most; the
pipeline runs the same sieve over LAION-400M in bounded memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import ValidationError

from djray import schema as S
from djray.config import ConfigError, _format_errors
from djray.ops.sieve import SIEVES, SieveParams
from djray.ops.sieve.base import ROW_ID

class PySieve:
    """One configured sieve (every runtime step it runs as) over a table of signals."""

    def __init__(self, params: SieveParams):
        self.params = params

    @property
    def name(self) -> str:
        return self.params.op

    def __repr__(self) -> str:
        return f"djray.sieve({self.params!r})"

    def select(self, table: Any) -> Any:
        """`table` (pyarrow Table or pandas DataFrame) with `keep`, `stage`, `reason`, `detail` and the columns the
        sieve publishes, one row per alive input row (rows with a phase-A `reason` are left out), in the pipeline's
        order. Returns the type it was given. Kept rows: `out[out["keep"]]` / `out.filter(out["keep"])`."""
        from djray.ops.sieve.inprocess import run_sieves

        pandas = not isinstance(table, pa.Table)
        t = pa.Table.from_pandas(table, preserve_index=False) if pandas else table
        out = run_sieves([self.params], _with_row_ids(t))
        return out.to_pandas() if pandas else out

    def kept(self, table: Any) -> Any:
        """Only the rows the sieve keeps (same columns as `select`)."""
        out = self.select(table)
        return out[out["keep"]] if not isinstance(out, pa.Table) else out.filter(out.column("keep"))


def sieve(name: str, **params: Any) -> PySieve:
    """The sieve `name` (random, key_dedup, exact_dedup, clip_score, cluster, semdedup, d4) with `params`."""
    cls = SIEVES.get(name)
    if cls is None:
        raise ConfigError(f"sieve: unknown op {name!r} (one of {', '.join(sorted(SIEVES))})")
    try:
        return PySieve(cls.model_validate({**params, "op": name}))
    except ValidationError as e:
        raise ConfigError(_format_errors(e).replace("\n  ", f"\n  sieve.{name}.")) from None


def _with_row_ids(t: pa.Table) -> pa.Table:
    """The pipeline's row order (`_row_id` = shard order << 32 | src_index, shards sorted by name) when the table
    says where its rows come from; otherwise run_sieves uses table order."""
    if ROW_ID in t.column_names or not {S.SRC_SHARD, S.SRC_INDEX} <= set(t.column_names):
        return t
    shards = t.column(S.SRC_SHARD)
    names = pc.unique(shards)
    names = names.take(pc.sort_indices(names))
    order = pc.index_in(shards, value_set=names).to_numpy(zero_copy_only=False).astype(np.int64)
    index = t.column(S.SRC_INDEX).to_numpy().astype(np.int64)
    return t.append_column(ROW_ID, pa.array((order << 32) | index))
