"""The phase-B runtime on a real local Ray instance against references written from the sieves' definitions: same
keep sets whatever the number of map tasks, partitions and writers, and (where the definition says so) whatever the
shard order; finished steps are never recomputed; a partial step is redone."""

from __future__ import annotations

import hashlib
import sys
from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from djray import schema as S
from djray.ops import sieve as sieves
from djray.ops.sieve.base import RankSieve, SieveParams, keep_count
from djray.ops.sieve.exact_dedup import ExactDedupParams
from djray.ops.sieve.key_dedup import KeyDedupParams
from djray.ops.sieve.random import RandomParams
from djray.runtime import select
from djray.runtime.decisions import read_decisions
from signals_store import context, write_store

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the test's own sieve travels to the workers


def _pool(n_shards: int = 6, rows: int = 150, seed: int = 0) -> dict[str, list[dict]]:
    rng = np.random.default_rng(seed)
    shards = {}
    for s in range(n_shards):
        shards[f"part-{s:03d}.tar"] = [
            {S.KEY: f"k{int(rng.integers(0, n_shards * rows * 0.8))}",
             S.IMG_SHA256: f"img{int(rng.integers(0, n_shards * rows // 2))}",
             S.REASON: "corrupt_image" if rng.random() < 0.08 else None,
             S.STAGE: None}
            for _ in range(rows)]
        for r in shards[f"part-{s:03d}.tar"]:
            r[S.STAGE] = "decode" if r[S.REASON] else None
    return shards


def _run(tmp_path, shards: dict[str, list[dict]], params: list[SieveParams], order: list[str] | None = None,
         tag: str = "t"):
    write_store(tmp_path, shards)
    order = order or sorted(shards)
    ctx = context(tmp_path, order, params, tag)
    rows = sum(len(v) for v in shards.values())
    records = select.run_selection(ctx, params, lambda: rows, lambda: {S.KEY: 8.0, S.IMG_SHA256: 70.0}, 2)
    return ctx, records


def _decided(ctx) -> dict[tuple[str, int], tuple[str, str, str]]:
    """(shard, index) → (stage, reason, detail) of the first step that dropped it."""
    out = {}
    for step in ctx.steps:
        for shard in ctx.shards:
            t = read_decisions(ctx, step, shard)
            if t is None:
                continue
            for r in t.to_pylist():
                if r[S.REASON] is not None:
                    assert (shard, r[S.SRC_INDEX]) not in out, "a row dropped by two steps"
                    out[(shard, r[S.SRC_INDEX])] = (step.stage, r[S.REASON], r[S.DETAIL])
    return out


def _reference_dedup(shards, order) -> dict[tuple[str, int], tuple[str, str]]:
    """key_dedup then exact_dedup, from the definitions: first alive occurrence by (shard order, index) wins."""
    out, keys, images = {}, {}, {}
    for shard in order:
        for i, r in enumerate(shards[shard]):
            if r[S.REASON] is not None:
                continue
            if r[S.KEY] in keys:
                out[(shard, i)] = ("sieve:key_dedup", "duplicate_key")
                continue
            keys[r[S.KEY]] = (shard, i)
            if r[S.IMG_SHA256] in images:
                out[(shard, i)] = ("sieve:exact_dedup", "duplicate_image")
                continue
            images[r[S.IMG_SHA256]] = (shard, i)
    return out


@pytest.mark.parametrize("partition_bytes, map_bytes, one_task_shards", [
    (256 << 20, 128 << 20, 16),  # a small pool: each step in one task
    (256 << 20, 128 << 20, 0),   # map tasks, one reduce, writers
    (2000, 500, 16),             # many partitions
])
def test_dedup_steps_match_the_definition_for_any_task_layout(ray_cluster, tmp_path, monkeypatch, partition_bytes,
                                                               map_bytes, one_task_shards):
    monkeypatch.setattr(select, "TARGET_PARTITION_BYTES", partition_bytes)
    monkeypatch.setattr(select, "TARGET_MAP_BYTES", map_bytes)
    monkeypatch.setattr(select, "ONE_TASK_MAX_SHARDS", one_task_shards)
    shards = _pool()
    ctx, records = _run(tmp_path, shards, [KeyDedupParams(), ExactDedupParams()])
    got = {pos: v[:2] for pos, v in _decided(ctx).items()}
    expect = _reference_dedup(shards, sorted(shards))
    assert got == expect and len(expect) > 100
    alive = sum(r[S.REASON] is None for rows in shards.values() for r in rows)
    assert records[0]["rows_in"] == alive
    assert records[1]["rows_in"] == records[0]["kept"] and records[1]["kept"] == alive - len(expect)
    if partition_bytes == 2000:
        assert records[0]["tasks"]["reduce"] > 1 and records[0]["tasks"]["map"] == 6
    elif one_task_shards:
        assert all(r["tasks"] == {"one_task": 1} for r in records)
    else:
        assert records[0]["tasks"] == {"map": 4, "reduce": 1, "write": 2}
    # the detail names the survivor
    for (shard, i), (stage, reason, detail) in _decided(ctx).items():
        if reason == "duplicate_image":
            first = next((s, j) for s in sorted(shards) for j, r in enumerate(shards[s])
                         if r[S.IMG_SHA256] == shards[shard][i][S.IMG_SHA256] and (s, j) not in expect
                         and r[S.REASON] is None)
            assert detail.endswith(f"({first[0]}#{first[1]})")


def test_random_is_independent_of_shard_order_and_exact(ray_cluster, tmp_path):
    shards = _pool(seed=1)
    params = [KeyDedupParams(), RandomParams(keep_fraction=0.37, seed=9)]
    kept_keys = []
    for order, tag in ((sorted(shards), "a"), (sorted(shards, reverse=True), "b")):
        ctx, records = _run(tmp_path / tag, shards, params, order, tag)
        dropped = _decided(ctx)
        kept_keys.append(sorted(r[S.KEY] for s in shards for i, r in enumerate(shards[s])
                                if r[S.REASON] is None and (s, i) not in dropped))
        assert records[1]["kept"] == keep_count(0.37, records[1]["rows_in"])
    assert kept_keys[0] == kept_keys[1]
    unique = sorted({r[S.KEY] for rows in shards.values() for r in rows if r[S.REASON] is None})

    def h(key):
        return int.from_bytes(hashlib.blake2b(f"9\x1f{key}".encode(), digest_size=8).digest(), "little")

    assert kept_keys[0] == sorted(sorted(unique, key=lambda k: (h(k), k))[:keep_count(0.37, len(unique))])


class TiedParams(SieveParams):
    op: Literal["tied"] = "tied"
    keep_fraction: float = 0.5


class TiedSieve(RankSieve):
    """Three score levels only: the cut-off falls inside a tie and the key decides among the tied rows."""

    name: ClassVar[str] = "tied"
    Params: ClassVar[type[TiedParams]] = TiedParams
    reason: ClassVar[str] = "tied_out"

    def score(self, rows):
        return np.array([int(k[1:]) % 3 for k in rows.column(S.KEY).to_pylist()], np.float32)

    def budget(self, pool):
        return keep_count(self.params.keep_fraction, pool)


def test_rank_cut_off_inside_a_tie_uses_the_tie_break(ray_cluster, tmp_path, monkeypatch):
    monkeypatch.setitem(sieves._BY_PARAMS, TiedParams, TiedSieve)
    shards = _pool(seed=2)
    ctx, records = _run(tmp_path, shards, [KeyDedupParams(), TiedParams(keep_fraction=0.45)])
    dropped = _decided(ctx)
    survivors = [(s, i, r[S.KEY]) for s in sorted(shards) for i, r in enumerate(shards[s])
                 if r[S.REASON] is None and (s, i) not in dropped]
    alive = {}
    for s in sorted(shards):
        for i, r in enumerate(shards[s]):
            if r[S.REASON] is None and r[S.KEY] not in alive:
                alive[r[S.KEY]] = (s, i)
    n = keep_count(0.45, len(alive))
    expect = sorted(sorted(alive, key=lambda k: (-(int(k[1:]) % 3), k))[:n])
    assert sorted(k for _, _, k in survivors) == expect
    assert records[1]["cutoff"] is not None and records[1]["kept"] == n
    counts = np.bincount([int(k[1:]) % 3 for k in alive], minlength=3)
    assert counts[2] < n < counts[2] + counts[1]  # the cut really falls inside the middle tie


def test_finished_steps_are_never_recomputed_and_a_partial_step_is_redone(ray_cluster, tmp_path):
    shards = _pool(seed=3)
    params = [KeyDedupParams(), RandomParams(keep_fraction=0.5, seed=1)]
    ctx, first = _run(tmp_path, shards, params)
    fs, layout = ctx.out()
    step0 = layout.step_dir(ctx.steps[0].name)
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / step0).glob("*.parquet")}
    # a crash in step 1: its marker is gone and a stray file lies in its directory
    marker = tmp_path / layout.step_marker(ctx.steps[1].name)
    marker.unlink()
    stray = tmp_path / layout.step_dir(ctx.steps[1].name) / "stray.parquet"
    pq.write_table(pa.table({"x": [1]}), stray)
    before = _decided(ctx)
    select.run_selection(ctx, params, lambda: 0, lambda: {}, 2)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / step0).glob("*.parquet")} == stamps
    assert not stray.exists() and marker.exists()
    assert _decided(ctx) == before


@ray.remote(num_cpus=2)
class _Holder:
    def ready(self) -> bool:
        return True


def test_a_fit_asks_for_the_cpus_that_are_free(ray_cluster):
    """A fit asks for every CPU of a node; when something else holds some (another job, a pool still going away), it
    waits a little, then takes the free ones instead of waiting for ever."""
    total = int(ray.cluster_resources()["CPU"])
    assert select.free_cpus(total, wait_s=30) == total  # nothing held: after a wait at most, all of them
    holder = _Holder.remote()
    try:
        ray.get(holder.ready.remote())
        got = select.free_cpus(total, wait_s=0.5)
        assert 1 <= got <= total - 2
        assert ray.get(_cpus.options(num_cpus=got).remote(), timeout=60) == got  # it can be scheduled
    finally:
        ray.kill(holder)


@ray.remote
def _cpus() -> int:
    return int(ray.get_runtime_context().get_assigned_resources()["CPU"])
