"""infogrowth against references written here from seed-algorithms §6: the cleaner at its threshold, gains from an
EXACT kNN over the rows accepted before each row (order: blake2b(seed, key)), 99th-percentile normalisation; HNSW
recall is reported and must be near 1 at the reference parameters."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pytest
import sieve_data as D

from djray import schema as S
from djray.config import ConfigError, parse_config
from djray.ops.sieve.infogrowth import InfoGrowthParams
from djray.ops.sieve.inprocess import run_sieves

pytest.importorskip("hnswlib")


@pytest.fixture(scope="module")
def pool():
    table = D.clustered(1500, d=16, seed=5)
    text = D.clustered(1500, d=16, seed=6, exact=0, near=0).column(S.CLIP_IMAGE_EMBEDDING)
    return table.append_column(S.CLIP_TEXT_EMBEDDING, text)


def exact_gains(table, seed, k):
    keys = table.column(S.KEY).to_pylist()
    u = [int.from_bytes(hashlib.blake2b(f"{seed}\x1f{key}".encode(), digest_size=8).digest(), "little")
         for key in keys]
    order = sorted(range(len(keys)), key=lambda i: (u[i], keys[i]))
    xi, xt = (D.unit64(table, c)[order] for c in (S.CLIP_IMAGE_EMBEDDING, S.CLIP_TEXT_EMBEDDING))
    raw = np.ones(len(keys))
    for t in range(1, len(keys)):
        kk = min(t, k)
        gi = np.sort(1 - xi[:t] @ xi[t])[:kk].mean()
        gt = np.sort(1 - xt[:t] @ xt[t])[:kk].mean()
        raw[t] = (gi + gt) / 2
    return {keys[i]: raw[j] for j, i in enumerate(order)}


def test_gains_match_exact_knn_and_normalisation(pool):
    params = InfoGrowthParams(align_threshold=-1.0, seed=9)
    out = run_sieves([params], pool)
    assert out.column("keep").to_pylist() == [True] * pool.num_rows
    want = exact_gains(pool, 9, 4)
    keys = out.column(S.KEY).to_pylist()
    got = np.array(out.column("gain_raw").to_pylist())
    ref = np.array([want[key] for key in keys])
    close = np.abs(got - ref) < 1e-5
    print(f"HNSW agreement with exact kNN gains: {close.mean():.4f}")
    assert close.mean() >= 0.99
    assert got[ref == 1.0].tolist() == [1.0]  # the first row in processing order met an empty index: (1, 1)
    q99 = np.percentile(got.astype(np.float64), 99)
    np.testing.assert_array_equal(out.column(S.GAIN).to_numpy(),
                                  np.clip(got / q99, 0, 1).astype(np.float32))


def test_cleaner_threshold_and_quantile(pool):
    score = pool.column(S.CLIP_SCORE).to_numpy()
    t = float(np.float32(0.37))
    out = run_sieves([InfoGrowthParams(align_threshold=t)], pool)
    kept = D.kept_keys(out)
    assert kept == {k for k, s in zip(pool.column(S.KEY).to_pylist(), score) if s >= np.float32(t)}
    assert any(s == np.float32(t) for s in score)  # a row exactly at δ is kept
    dropped = out.filter(pa.compute.invert(out.column("keep")))
    assert set(dropped.column("reason").to_pylist()) == {S.Reason.INFOGROWTH_MISALIGNED}
    out = run_sieves([InfoGrowthParams(align_quantile=0.25)], pool)
    keys = pool.column(S.KEY).to_pylist()
    order = sorted(range(len(keys)), key=lambda i: (-float(score[i]), keys[i]))
    assert D.kept_keys(out) == {keys[i] for i in order[:1500 - 375]}


def test_keep_fraction_keeps_the_top_gains(pool):
    out = run_sieves([InfoGrowthParams(align_threshold=-1.0, keep_fraction=0.4)], pool)
    keys = out.column(S.KEY).to_pylist()
    gain = out.column(S.GAIN).to_numpy()
    order = sorted(range(len(keys)), key=lambda i: (-float(gain[i]), keys[i]))
    assert D.kept_keys(out) == {keys[i] for i in order[:600]}


def test_order_is_independent_of_shards_and_workers(pool, tmp_path, ray_cluster):
    small = pool.slice(0, 600)
    params = InfoGrowthParams(align_quantile=0.1, seed=3)
    local = D.by_key(run_sieves([params], small))
    for shards in (2, 5):
        dist = D.run_distributed(tmp_path / f"s{shards}", small, [params], shards=shards)
        assert D.kept_keys(dist) == D.kept_keys(local)
        np.testing.assert_array_equal(dist.column(S.GAIN).to_numpy(), local.column(S.GAIN).to_numpy())
    part = InfoGrowthParams(align_quantile=0.1, partition="cluster", n_clusters=3)
    dist = D.run_distributed(tmp_path / "c", small, [part], shards=3)
    np.testing.assert_array_equal(dist.column(S.GAIN).to_numpy(),
                                  D.by_key(run_sieves([part], small)).column(S.GAIN).to_numpy())


def test_config_rules():
    base = {"input": {"path": "/x", "format": "webdataset"}, "output": {"path": "/o"}, "clip": {"weights": "random"}}
    with pytest.raises(ConfigError, match="recaption: true is not supported yet"):
        parse_config({**base, "sieve": [{"op": "infogrowth", "align_threshold": 0.2, "recaption": True}]})
    with pytest.raises(ConfigError, match="exactly one of align_threshold or align_quantile"):
        parse_config({**base, "sieve": [{"op": "infogrowth"}]})
    cfg = parse_config({**base, "sieve": [{"op": "infogrowth", "align_quantile": 0.1, "hnsw": {"M": 16}}]})
    assert [s.op for s in cfg.steps()] == ["key_dedup", "infogrowth", "infogrowth", "infogrowth"]
