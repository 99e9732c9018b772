"""Signals for sieve tests: clustered unit embeddings with planted exact and near duplicates and score ties, and a
driver that runs sieves through the distributed phase-B runtime on a signals store written from such a table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from djray import schema as S
from djray.io.fs import Storage
from djray.ops.sieve import build_sieve, expand_steps
from djray.runtime.decisions import SelectionContext, Step, read_decisions
from djray.runtime.layout import Layout
from djray.runtime.select import run_selection


def clustered(n: int, d: int = 32, k: int = 12, seed: int = 0, exact: int = 40, near: int = 60,
              spread: float = 0.35) -> pa.Table:
    """`n` rows: k Gaussian blobs on the sphere; `exact` rows copy an earlier row's embedding bit for bit, `near`
    rows are an earlier row plus tiny noise (cos ≈ 0.99+); clip_score has many exact ties (2 decimals)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    x = centres[rng.integers(0, k, n)] + spread * rng.normal(size=(n, d)) * np.sqrt(d) / 4
    src = rng.choice(n // 2, exact + near, replace=False)
    dst = rng.choice(np.arange(n // 2, n), exact + near, replace=False)
    x[dst[:exact]] = x[src[:exact]]
    x[dst[exact:]] = x[src[exact:]] + 0.02 * rng.normal(size=(near, d))
    x = x.astype(np.float32)
    keys = [f"k{(i * 7919) % n:07d}" for i in range(n)]  # unique, in another order than the rows (n % 7919 != 0)
    score = np.round(rng.random(n), 2).astype(np.float32)
    emb = pa.array(list(x), pa.list_(pa.float32()))
    return pa.table({S.KEY: keys, S.VIS_EMBEDDING: emb, S.CLIP_IMAGE_EMBEDDING: emb, S.CLIP_SCORE: score})


def unit64(table: pa.Table, column: str = S.VIS_EMBEDDING) -> np.ndarray:
    """Reference embeddings: float64, L2-normalised."""
    x = np.stack(table.column(column).to_numpy(zero_copy_only=False)).astype(np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_store(root: Path, table: pa.Table, shards: int, names: list[str] | None = None) -> list[str]:
    """Split `table` into `shards` signals files (rows dealt round-robin); returns the shard names in order."""
    names = names or [f"part-{i:03d}.tar" for i in range(shards)]
    layout = Layout(str(root))
    n = table.num_rows
    for s, name in enumerate(names):
        idx = np.arange(s, n, len(names))
        part = table.take(pa.array(idx))
        m = part.num_rows
        cols = {S.KEY: part.column(S.KEY), S.SRC_SHARD: pa.array([name] * m), S.SRC_INDEX: pa.array(np.arange(m)),
                S.STAGE: pa.nulls(m, pa.string()), S.REASON: pa.nulls(m, pa.string()),
                S.DETAIL: pa.nulls(m, pa.string())}
        cols.update({c: part.column(c) for c in table.column_names if c != S.KEY})
        path = Path(layout.signals(name))
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(cols), path)
    return names


def run_distributed(root: Path, table: pa.Table, params: list, shards: int = 4, names: list[str] | None = None,
                    cpus: int = 4) -> pa.Table:
    """Run `params` (configured sieves) with the phase-B runtime over `table` written as a signals store; returns
    key → (keep, stage, reason, detail, published columns), sorted by key."""
    names = write_store(root, table, shards, names)
    expanded = expand_steps(params)
    steps = tuple(Step(i, p.op, build_sieve(p).reason, tuple(build_sieve(p).writes), f"{i:064d}")
                  for i, p in enumerate(expanded))
    ctx = SelectionContext(str(root), str(root), Storage(), tuple(names), "0" * 64, steps)
    run_selection(ctx, expanded, lambda: table.num_rows, lambda: {S.VIS_EMBEDDING: 4.0 * 32}, cpus)
    parts = []
    for name in names:
        sig = pq.read_table(Layout(str(root)).signals(name), columns=[S.KEY, S.SRC_INDEX])
        stage = pa.nulls(sig.num_rows, pa.string())
        reason, detail = stage, stage
        published: dict[str, pa.Array] = {}
        for step in steps:
            decided = read_decisions(ctx, step, name)
            if decided is None:
                continue
            at = pc.index_in(sig.column(S.SRC_INDEX), value_set=decided.column(S.SRC_INDEX))
            for c in step.writes:
                published[c] = decided.column(c).take(at)
            newly = pc.and_(pc.is_valid(decided.column(S.REASON).take(at)), pc.is_null(reason))
            newly = pc.fill_null(newly, False)
            stage = pc.if_else(newly, pa.scalar(step.stage), stage)
            detail = pc.if_else(newly, decided.column(S.DETAIL).take(at), detail)
            reason = pc.if_else(newly, decided.column(S.REASON).take(at), reason)
        parts.append(pa.table({S.KEY: sig.column(S.KEY), "keep": pc.is_null(reason), "stage": stage,
                               "reason": reason, "detail": detail, **published}))
    return pa.concat_tables(parts, promote_options="default").sort_by(S.KEY)


def by_key(result: pa.Table) -> pa.Table:
    """In-process `run_sieves` output in the same shape as `run_distributed`'s."""
    return result.sort_by(S.KEY)


def kept_keys(result: pa.Table) -> set[str]:
    return set(result.filter(result.column("keep")).column(S.KEY).to_pylist())
