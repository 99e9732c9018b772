"""Run sieves in one process on a pyarrow Table of signals: the reference semantics of the distributed runtime
(`djray.runtime.select` reproduces them at scale), for tests and notebooks.

    table = pq.read_table("OUTPUT/signals/")              # or any table with `key` and the columns a sieve reads
    result = run_sieves([RandomParams(keep_fraction=0.5), SemDedupParams(eps=0.05)], table)   # params or sieves
    result.filter(result["keep"])

An infogrowth cleaner with `recaption: true` reads the recaptions' `recaption_score` (and `_recaption_code`) from the
table — the runtime computes them (djray.runtime.recaption); in process nothing calls an LLM, and the gain step reads
`clip_text_embedding` as the table gives it (put a rescued row's recaption embedding there to reproduce the runtime).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from djray import schema as S
from djray.ops.sieve.base import (GROUP, ROW_ID, Decision, GroupSieve, RankSieve, Sieve, SieveParams, alive,
                                  sample_filter, sample_order, sample_seed, sort_by_row_id, top_n_mask)


def with_runtime_columns(table: pa.Table) -> pa.Table:
    """Add the columns every sieve may rely on: a row id (table order unless present), src_shard and src_index."""
    n = table.num_rows
    if ROW_ID not in table.column_names:
        table = table.append_column(ROW_ID, pa.array(np.arange(n, dtype=np.int64)))
    if S.SRC_SHARD not in table.column_names:
        table = table.append_column(S.SRC_SHARD, pa.array([""] * n, pa.string()))
    if S.SRC_INDEX not in table.column_names:
        table = table.append_column(S.SRC_INDEX, table.column(ROW_ID))
    return table


def decide(sieve: Sieve, rows: pa.Table) -> Decision:
    """One sieve over `rows` (alive rows, sorted by row id): fit, then group/select or rank."""
    rows = sort_by_row_id(rows)
    if sieve.fit_rows == "scan":
        sieve.fit(iter([rows]))
    elif sieve.fit_rows == "sample":
        fraction = sieve.sample_size(rows.num_rows) / max(rows.num_rows, 1)
        sieve.fit(iter([sample_order([sample_filter(rows, sample_seed(sieve), fraction)])]))
    if isinstance(sieve, RankSieve):
        return _rank(sieve, rows)
    assert isinstance(sieve, GroupSieve)
    return _grouped(sieve, rows)


def _rank(sieve: RankSieve, rows: pa.Table) -> Decision:
    score = sieve.score(rows)
    t = sieve.threshold()
    if t is None and getattr(sieve, "recaption", False):
        t = _recaption_delta(sieve, rows)
    if t is not None:
        keep, cutoff = score >= t, t
    else:
        keep = top_n_mask(score, sieve.budget(rows.num_rows), sieve.tie_break(rows))
        cutoff = float(score[keep].min()) if keep.any() else None
    details = sieve.drop_details(rows, score, keep, cutoff)
    return Decision(keep, details, sieve.publish(rows, score))


def _recaption_delta(sieve: RankSieve, rows: pa.Table) -> float:
    """δ of a re-captioning cleaner with a budget: the cut-off of the top n by the ORIGINAL alignment (the table
    carries `recaption_score`, which the runtime would have computed for the rows below δ)."""
    align = sieve.align(rows)
    n = sieve.budget(rows.num_rows)
    if n >= rows.num_rows:
        return -np.inf
    if n <= 0:
        return np.inf
    return float(np.partition(align, rows.num_rows - n)[rows.num_rows - n])


def _grouped(sieve: GroupSieve, rows: pa.Table) -> Decision:
    n = rows.num_rows
    groups = np.asarray(sieve.group(rows), dtype=np.int64)
    rows = rows.append_column(GROUP, pa.array(groups))
    if sieve.needs_group_sizes:
        values, counts = np.unique(groups, return_counts=True)
        sieve.plan(dict(zip(values.tolist(), counts.tolist())))
    keep = np.ones(n, dtype=bool)
    details: list[str | None] = [None] * n
    columns: dict[str, list] = {name: [None] * n for name in sieve.writes}
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        d = sieve.select(rows.take(pa.array(idx)))
        keep[idx] = d.keep
        for j, i in enumerate(idx):
            if d.detail is not None and not d.keep[j]:
                details[i] = d.detail[j]
        for name in sieve.writes:
            values = d.columns[name].to_pylist()
            for j, i in enumerate(idx):
                columns[name][i] = values[j]
    typed = {name: pa.array(v, S.PUBLISHED_FIELDS[name]) for name, v in columns.items()}
    return Decision(keep, details, typed)


def run_sieves(sieves: list[Sieve | SieveParams], table: pa.Table) -> pa.Table:
    """Apply `sieves` in order to the alive rows of `table`; returns the table (sorted by row id) with `keep`,
    `stage`, `reason`, `detail` for the sieve decisions and every published column. A sieve that runs as several
    steps (semdedup, d4) runs them all; a later step reads what an earlier one published."""
    from djray.ops.sieve import build_sieve, expand_steps

    params = [s if isinstance(s, SieveParams) else s.params for s in sieves]
    sieves = [build_sieve(p) for p in expand_steps(params)]
    table = sort_by_row_id(with_runtime_columns(alive(table)))
    n = table.num_rows
    alive_now = np.ones(n, dtype=bool)
    stage: list[str | None] = [None] * n
    reason: list[str | None] = [None] * n
    detail: list[str | None] = [None] * n
    published: dict[str, list] = {}
    for sieve in sieves:
        idx = np.flatnonzero(alive_now)
        d = decide(sieve, table.take(pa.array(idx)))
        for name, col in d.columns.items():
            values = published.setdefault(name, [None] * n)
            for j, v in zip(idx, col.to_pylist()):
                values[j] = v
            column = pa.array(values, S.PUBLISHED_FIELDS[name])
            table = table.drop_columns([name]) if name in table.column_names else table
            table = table.append_column(name, column)
        for j in np.flatnonzero(~d.keep):
            i = idx[j]
            alive_now[i] = False
            stage[i], reason[i], detail[i] = sieve.stage, sieve.reason, (d.detail[j] if d.detail else None)
    out = table
    for name, values in (("keep", alive_now), ("stage", stage), ("reason", reason), ("detail", detail)):
        if name in out.column_names:
            out = out.drop_columns([name])
        out = out.append_column(name, pa.array(values, pa.bool_() if name == "keep" else pa.string()))
    return out
