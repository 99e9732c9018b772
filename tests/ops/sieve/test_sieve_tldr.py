"""tldr on a toy pool worked out by hand (seed-algorithms §7.7): three obvious clusters, every N-th member of each in
key order, intersected with the top CLIP-score half of the whole pool."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import sieve_data as D

from djray import schema as S
from djray.ops.sieve.inprocess import run_sieves
from djray.ops.sieve.tldr import TldrParams


def toy() -> pa.Table:
    # clusters A (7 rows), B (5), C (3) around three directions 120° apart in 2-d, keys interleaved across clusters
    centre = {"A": (1.0, 0.0), "B": (-0.5, 0.866), "C": (-0.5, -0.866)}
    rows = [("a1", "A", 0.9), ("b1", "B", 0.1), ("a2", "A", 0.8), ("c1", "C", 0.7), ("a3", "A", 0.2),
            ("b2", "B", 0.6), ("a4", "A", 0.3), ("c2", "C", 0.5), ("a5", "A", 0.95), ("b3", "B", 0.85),
            ("a6", "A", 0.4), ("c3", "C", 0.05), ("a7", "A", 0.75), ("b4", "B", 0.65), ("b5", "B", 0.15)]
    rng = np.random.default_rng(0)
    emb = [np.array(centre[c]) + 0.01 * rng.normal(size=2) for _, c, _ in rows]
    return pa.table({S.KEY: [r[0] for r in rows], S.CLIP_IMAGE_EMBEDDING: pa.array(emb, pa.list_(pa.float32())),
                     S.CLIP_SCORE: pa.array([r[2] for r in rows], pa.float32())})


def test_toy_pool_by_hand():
    # seed 1: faiss's random initialisation (one start, as TL;DR runs it) finds the three clusters on 15 points;
    # the assertion on the cluster ids below checks it did
    out = run_sieves([TldrParams(n_clusters=3, stride=2, pca_dim=256, itm_fraction=0.5, seed=1)], toy())
    # stride 2 in key order: A a1 a3 a5 a7, B b1 b3 b5, C c1 c3
    # top half (round-half-up(7.5) = 8 rows) by score: a5 .95, a1 .9, b3 .85, a2 .8, a7 .75, c1 .7, b4 .65, b2 .6
    assert D.kept_keys(out) == {"a1", "a5", "a7", "b3", "c1"}
    clusters = dict(zip(out.column(S.KEY).to_pylist(), out.column("tldr_cluster_id").to_pylist()))
    assert len({clusters[k] for k in clusters if k[0] == "a"}) == 1 and len(set(clusters.values())) == 3
    itm = dict(zip(out.column(S.KEY).to_pylist(), out.column("tldr_itm").to_pylist()))
    assert {k for k, v in itm.items() if v} == {"a5", "a1", "b3", "a2", "a7", "c1", "b4", "b2"}
    detail = dict(zip(out.column(S.KEY).to_pylist(), out.column("detail").to_pylist()))
    assert detail["a3"] == "stride member of its cluster, outside the top CLIP-score half"
    assert detail["a2"].startswith("position 1 of cluster") and detail["a2"].endswith("the stride 2")
    assert set(out.filter(pa.compute.invert(out.column("keep"))).column("stage").to_pylist()) == {"sieve:tldr"}


def test_keep_fraction_sets_the_stride():
    assert TldrParams(keep_fraction=0.1).steps(False)[1].stride == 5
    assert TldrParams(keep_fraction=0.25, itm_fraction=0.5).steps(False)[1].stride == 2


def test_distributed_equals_in_process(tmp_path, ray_cluster):
    table = D.clustered(1200, d=16, seed=11)
    params = TldrParams(n_clusters=8, pca_dim=8, stride=3)
    dist = D.run_distributed(tmp_path / "t", table, [params], shards=3)
    local = D.by_key(run_sieves([params], table))
    assert D.kept_keys(dist) == D.kept_keys(local)
    np.testing.assert_array_equal(dist.column("tldr_cluster_id").to_numpy(), local.column("tldr_cluster_id").to_numpy())
