"""d2pruning against a brute-force implementation written here from seed-algorithms §7.6: exact directed kNN by
squared Euclidean distance (ties: smaller key), forward message passing, reverse selection by an EAGER max over
the whole score vector (the sieve's lazy heap must pick the same rows)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import sieve_data as D

from djray import schema as S
from djray.ops.sieve import build_sieve
from djray.ops.sieve.d2pruning import D2PruningParams
from djray.ops.sieve.inprocess import decide, run_sieves, with_runtime_columns


@pytest.fixture(scope="module")
def pool():
    table = D.clustered(5000, d=16, seed=3)
    text = D.clustered(5000, d=16, seed=4, exact=0, near=0).column(S.CLIP_IMAGE_EMBEDDING)
    return table.append_column(S.CLIP_TEXT_EMBEDDING, text)


def brute_force(table, fraction, k, gf, gr, features):
    order = sorted(range(table.num_rows), key=table.column(S.KEY).to_pylist().__getitem__)
    t = table.take(pa.array(order))
    cols = {"image": [S.CLIP_IMAGE_EMBEDDING], "text": [S.CLIP_TEXT_EMBEDDING],
            "image_text": [S.CLIP_IMAGE_EMBEDDING, S.CLIP_TEXT_EMBEDDING]}[features]
    x = np.hstack([D.unit64(t, c) for c in cols])
    n = len(x)
    s = np.maximum(t.column(S.CLIP_SCORE).to_numpy().astype(np.float64) + 0.115, 1e-7)
    nbr, dist = np.zeros((n, k), int), np.zeros((n, k))
    for i in range(n):
        d = ((x - x[i]) ** 2).sum(axis=1)
        d[i] = np.inf
        nbr[i] = np.lexsort((np.arange(n), d))[:k]
        dist[i] = d[nbr[i]]
    fwd = s + (np.exp(-gf * dist) * s[nbr]).sum(axis=1)
    cur = fwd.copy()
    picked = np.zeros(n, bool)
    for _ in range(int(np.floor(fraction * n + 0.5))):
        i = int(np.argmax(np.where(picked, -np.inf, cur)))
        picked[i] = True
        for j, dj in zip(nbr[i], dist[i]):
            cur[j] -= np.exp(-gr * dj) * cur[i]
    keys = t.column(S.KEY).to_pylist()
    return {keys[i] for i in np.flatnonzero(picked)}, dict(zip(keys, fwd))


@pytest.mark.parametrize("k,features,gf,gr", [(1, "image_text", 1.0, 1.0), (5, "image", 1.0, 0.1),
                                              (3, "text", 2.0, 1.0)])
def test_matches_brute_force(pool, k, features, gf, gr):
    params = D2PruningParams(keep_fraction=0.3, k=k, features=features, gamma_forward=gf, gamma_reverse=gr)
    out = run_sieves([params], pool)
    want, fwd = brute_force(pool, 0.3, k, gf, gr, features)
    assert D.kept_keys(out) == want
    got = dict(zip(out.column(S.KEY).to_pylist(), out.column("d2_score").to_pylist()))
    np.testing.assert_allclose([got[key] for key in fwd], list(fwd.values()), rtol=1e-6)
    dropped = out.filter(pa.compute.invert(out.column("keep")))
    assert set(dropped.column("stage").to_pylist()) == {"sieve:d2pruning"}
    assert set(dropped.column("reason").to_pylist()) == {S.Reason.D2_NOT_SELECTED}


def test_distributed_equals_in_process_and_partitioned_is_labelled(pool, tmp_path, ray_cluster):
    small = pool.slice(0, 2000)
    for i, params in enumerate([D2PruningParams(keep_fraction=0.4, k=2),
                                D2PruningParams(keep_fraction=0.4, k=2, partition="cluster", n_clusters=4)]):
        dist = D.run_distributed(tmp_path / f"r{i}", small, [params], shards=3)
        assert D.kept_keys(dist) == D.kept_keys(D.by_key(run_sieves([params], small)))
        assert len(D.kept_keys(dist)) == 800
    sieve = build_sieve(D2PruningParams(keep_fraction=0.4, partition="cluster", n_clusters=4))
    decide(sieve, with_runtime_columns(small))
    assert sieve.describe()["exact"] is False and "cross-cluster" in sieve.describe()["approximate"]


def test_ivfpq_above_flat_max_rows_is_labelled_and_keeps_the_budget(pool):
    sieve = build_sieve(D2PruningParams(keep_fraction=0.3, flat_max_rows=1000))
    d = decide(sieve, with_runtime_columns(pool))
    assert int(d.keep.sum()) == 1500
    assert "IVF-PQ" in sieve.describe()["approximate"]


def test_pool_above_max_rows_per_group_is_refused(pool):
    with pytest.raises(ValueError, match="5,000 rows exceed max_rows_per_group 4,999; use partition: cluster"):
        run_sieves([D2PruningParams(keep_fraction=0.3, max_rows_per_group=4999)], pool)


def test_config_needs_the_sections_the_new_sieves_read():
    from djray.config import ConfigError, parse_config

    base = {"input": {"path": "/x", "format": "webdataset"}, "output": {"path": "/o"}}
    sieves = [{"op": "tldr"}, {"op": "d2pruning", "keep_fraction": 0.5},
              {"op": "infogrowth", "align_quantile": 0.1}, {"op": "vas", "target": {"kind": "pool"}}]
    cfg = parse_config({**base, "clip": {"weights": "random"}, "sieve": sieves})
    assert cfg.stages()[3:-1] == ["sieve:key_dedup", "sieve:tldr", "sieve:d2pruning", "sieve:infogrowth", "sieve:vas"]
    published = [c for p in cfg.steps() for c in build_sieve(p).writes]
    assert published == ["tldr_itm", "tldr_cluster_id", "d2_score", "gain_raw", "gain", "vas"]
    assert all(c in S.PUBLISHED_FIELDS for c in published)
    with pytest.raises(ConfigError, match=r"sieve\.0\.d2pruning: reads clip_score, which needs a `clip:` section"):
        parse_config({**base, "sieve": [sieves[1]]})
    with pytest.raises(ConfigError, match=r"sieve\.0\.tldr\.embedding: dino reads vis_embedding"):
        parse_config({**base, "clip": {"weights": "random"}, "sieve": [{"op": "tldr", "embedding": "dino"}]})
