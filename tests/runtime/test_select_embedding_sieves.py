"""The embedding sieves through the distributed phase-B runtime decide exactly as in one process (`run_sieves`),
whatever the shard count, shard order, partition and map sizes and CPU count; accounting is exact."""

from __future__ import annotations

import random

import pyarrow.compute as pc
import pytest
import sieve_data as D

from djray import schema as S
from djray.ops.sieve.clip_score import ClipScoreParams
from djray.ops.sieve.cluster import ClusterParams
from djray.ops.sieve.d4 import D4Params
from djray.ops.sieve.exact_dedup import ExactDedupParams
from djray.ops.sieve.inprocess import run_sieves
from djray.ops.sieve.semdedup import SemDedupParams
from djray.runtime import select

CASES = {
    "clip_score_fraction": [ClipScoreParams(keep_fraction=0.37)],
    "clip_score_min": [ClipScoreParams(min_score=0.5)],
    "cluster": [ClusterParams(keep_fraction=0.3, n_clusters=10, seed=3)],
    "semdedup_eps": [SemDedupParams(eps=0.03, n_clusters=10)],
    "semdedup_fraction": [SemDedupParams(keep_fraction=0.8, n_clusters=10, keep="random")],
    "d4_global": [D4Params(keep_fraction=0.5, dedup_fraction=0.8, n_clusters=10, proto_clusters=6)],
    "d4_per_cluster": [D4Params(keep_fraction=0.5, n_clusters=10, ranking="per_cluster")],
    "composed": [ClipScoreParams(keep_fraction=0.8), SemDedupParams(eps=0.03, n_clusters=8),
                 ClusterParams(keep_fraction=0.5, n_clusters=6)],
}
LAYOUTS = {  # shards, shard names permuted, map/partition bytes, cpus, a grouped step of a small pool in one task
    "one_task": (3, False, None, 1, True),
    "one_partition": (3, True, None, 2, False),
    "many_small_tasks": (7, True, 20_000, 4, True),
}


def _signals(n: int = 2400):
    table = D.clustered(n, seed=11)
    # exact_dedup reads img_sha256: the planted exact copies share it, every other row has its own
    emb = table.column(S.VIS_EMBEDDING).to_pylist()
    sha = [str(hash(tuple(v))) for v in emb]
    return table.append_column(S.IMG_SHA256, pc.cast(sha, "string"))


def _comparable(t):
    cols = ["keep", "reason"] + [c for c in t.column_names if c.endswith(("cluster_id", "cos_to_centroid",
                                                                          "max_sim"))]
    rows = t.select([S.KEY] + cols).to_pylist()
    near = [c for c in t.column_names if c.endswith("_nearest")]
    for r, extra in zip(rows, t.select(near).to_pylist()):
        r.update({c: v and v["key"] for c, v in extra.items()})
    return rows


ONE_PARTITION_CASES = ("cluster", "d4_per_cluster", "semdedup_eps", "composed")  # grouped steps: the task graph at P = 1


@pytest.mark.parametrize("case, layout", [(c, lay) for c in sorted(CASES) for lay in sorted(LAYOUTS)
                                          if lay != "one_partition" or c in ONE_PARTITION_CASES])
def test_distributed_equals_in_process(ray_cluster, tmp_path, monkeypatch, case, layout):
    shards, permute, task_bytes, cpus, one_task = LAYOUTS[layout]
    monkeypatch.setattr(select, "ONE_TASK_MAX_SHARDS", select.ONE_TASK_MAX_SHARDS if one_task else 0)
    params = CASES[case]
    table = _signals()
    names = [f"s{i:02d}.tar" for i in range(shards)]
    if permute:
        random.Random(5).shuffle(names)
    if task_bytes:
        monkeypatch.setattr(select, "TARGET_MAP_BYTES", task_bytes)
        monkeypatch.setattr(select, "TARGET_PARTITION_BYTES", task_bytes)
    got = D.run_distributed(tmp_path, table, params, shards, names, cpus)
    want = D.by_key(run_sieves(params, table))
    assert _comparable(got) == _comparable(want)
    kept = int(pc.sum(got.column("keep")).as_py())
    assert kept + got.column("reason").drop_null().__len__() == table.num_rows  # every row kept or dropped once
    assert 0 < kept < table.num_rows


def test_composition_order_is_respected(ray_cluster, tmp_path):
    """exact_dedup → clip_score → semdedup: each step sees only the survivors of the ones before."""
    table = _signals()
    params = [ExactDedupParams(), ClipScoreParams(keep_fraction=0.6), SemDedupParams(eps=0.03, n_clusters=8)]
    got = D.run_distributed(tmp_path, table, params, 4)
    stages = got.column("stage").drop_null().to_pylist()
    assert {"sieve:exact_dedup", "sieve:clip_score", "sieve:semdedup"} <= set(stages)
    survivors = table.num_rows - stages.count("sieve:exact_dedup")
    assert stages.count("sieve:clip_score") == survivors - int(0.6 * survivors + 0.5)  # exact count of the pool it saw
    alone = D.kept_keys(run_sieves(params[2:], table))
    assert D.kept_keys(got) != alone  # semdedup after the others is not semdedup on the whole pool
