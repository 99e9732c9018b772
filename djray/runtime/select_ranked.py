"""Phase B's ranked steps (`RankSieve`: clip_score, vas, infogrowth's cleaner and norm, …): an exact global top n.

Map tasks return (row id, score) — 12 bytes per alive row — to one task, which finds the cut-off score of the top n
(`np.partition`); when rows tie at the cut-off, a second small pass gathers only the tied rows' tie-break keys and
picks the rows still needed. Map tasks then score again and write the per-shard decision files. A threshold
(`sieve.threshold()`) needs no gather at all. A recaption step (infogrowth `recaption: true`) runs its re-caption
pass between the cut-off δ and the decisions, and its decisions read the stored align' (runtime/recaption.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from djray import schema as S
from djray.ops.sieve.base import ROW_ID, RankSieve
from djray.runtime.decisions import SelectionContext, Step, alive_rows, decision_rows, write_decisions
from djray.runtime.recaption_store import attach, read_recaptions


def ranked(ctx_ref, chunks: list[list[int]], step: Step, sieve: RankSieve, sieve_ref, retry: dict,
            recaption: Callable[[float], dict[str, Any]] | None = None) -> dict[str, Any]:
    """`recaption(δ)` (a recaption step): after the cut-off δ is known, before deciding; ties at δ are then all
    kept (the rule is align ≥ δ or align' ≥ δ)."""
    cutoff, ties = sieve.threshold(), None
    rows_in = None
    if cutoff is None:
        scored = [_scores.options(**retry).remote(ctx_ref, c, step.index, sieve_ref) for c in chunks]
        cutoff, n_keep, rows_in, need, tied = ray.get(_cut.options(**retry).remote(sieve_ref, *scored))
        if need is not None and need < tied and recaption is None:
            tie_rows = [_tied.options(**retry).remote(ctx_ref, c, step.index, sieve_ref, cutoff) for c in chunks]
            ties = ray.get(_pick_ties.options(**retry).remote(need, *tie_rows))
    extra = {} if recaption is None else {"delta": None if math.isinf(cutoff) else float(cutoff),
                                          "recaption": recaption(cutoff)}
    counts = ray.get([_decide.options(**retry).remote(ctx_ref, c, step, sieve_ref, cutoff, ties) for c in chunks])
    seen = sum(c[0] for c in counts)
    dropped = sum(c[1] for c in counts)
    record = {"rows_in": seen, "dropped": dropped, "kept": seen - dropped, "files": sum(c[2] for c in counts),
              "cutoff": None if cutoff is None or math.isinf(cutoff) else float(cutoff),
              "tasks": {"map": len(chunks)}, **extra}
    assert rows_in is None or rows_in == seen
    return record


@ray.remote(num_cpus=1)
def _scores(ctx: SelectionContext, orders: list[int], before: int, sieve: RankSieve) -> pa.Table:
    """(row id, score): 12 bytes per alive row."""
    rows = pa.concat_tables([alive_rows(ctx, o, sieve.reads, before) for o in orders])
    score = np.asarray(sieve.score(rows), dtype=np.float32) if rows.num_rows else np.zeros(0, np.float32)
    return pa.table({ROW_ID: rows.column(ROW_ID), "score": pa.array(score)})


@ray.remote(num_cpus=1)
def _cut(sieve: RankSieve, *scored: pa.Table):
    """The exact cut-off of the top n: (cut-off score, n, pool, rows still needed among the tied, rows tied)."""
    score = np.concatenate([t.column("score").to_numpy() for t in scored]) if scored else np.zeros(0, np.float32)
    pool = int(score.size)
    if np.isnan(score).any():
        raise ValueError(f"sieve {sieve.name}: NaN scores")
    n = sieve.budget(pool)
    if n >= pool:
        return -math.inf, n, pool, None, 0
    if n <= 0:
        return math.inf, n, pool, None, 0
    cutoff = float(np.partition(score, pool - n)[pool - n])  # the n-th largest
    above = int((score > cutoff).sum())
    tied = int((score == cutoff).sum())
    return cutoff, n, pool, n - above, tied


@ray.remote(num_cpus=1)
def _tied(ctx: SelectionContext, orders: list[int], before: int, sieve: RankSieve, cutoff: float) -> pa.Table:
    rows = pa.concat_tables([alive_rows(ctx, o, sieve.reads, before) for o in orders])
    if rows.num_rows:
        rows = rows.filter(pa.array(np.asarray(sieve.score(rows), dtype=np.float32) == np.float32(cutoff)))
    keys = sieve.tie_break(rows)
    return pa.table({ROW_ID: rows.column(ROW_ID), **{f"t{i}": k for i, k in enumerate(keys)}})


@ray.remote(num_cpus=1)
def _pick_ties(need: int, *tied: pa.Table) -> np.ndarray:
    table = pa.concat_tables(tied)
    sort = [(name, "ascending") for name in table.column_names if name != ROW_ID]
    order = pc.sort_indices(table, sort_keys=sort)
    return np.sort(table.column(ROW_ID).take(order.slice(0, need)).to_numpy())


@ray.remote(num_cpus=1)
def _decide(ctx: SelectionContext, orders: list[int], step: Step, sieve: RankSieve, cutoff: float,
            ties: np.ndarray | None) -> tuple[int, int, int]:
    """Score again, keep score > cut-off (or >= without a tie list) plus the chosen tied rows, write decisions."""
    seen = dropped = files = 0
    for o in orders:
        rows = alive_rows(ctx, o, sieve.reads, step.index)
        if not rows.num_rows:
            continue
        if step.recaption:  # align' and the validation code of the rows below δ
            fs, layout = ctx.out()
            names = (S.RECAPTION_SCORE, S.RECAPTION_CODE)
            rows = attach(rows, read_recaptions(fs, layout, step.name, ctx.shards[o], list(names)), names)
        score = np.asarray(sieve.score(rows), dtype=np.float32)
        cut = np.float32(cutoff) if not math.isinf(cutoff) else cutoff
        keep = score > cut if ties is not None else score >= cut
        if ties is not None:
            keep |= (score == cut) & np.isin(rows.column(ROW_ID).to_numpy(), ties)
        shown = None if math.isinf(cutoff) else float(cutoff)
        details = sieve.drop_details(rows, score, keep, shown)
        decided = decision_rows(rows.column(ROW_ID).to_numpy(), keep, details, step, sieve.publish(rows, score))
        files += write_decisions(ctx, step, decided)
        seen += rows.num_rows
        dropped += int((~keep).sum())
    return seen, dropped, files
