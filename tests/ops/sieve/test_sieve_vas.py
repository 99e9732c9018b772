"""vas against a NumPy reference written here from seed-algorithms §5 (ypwang61/VAS `baselines/vas.py`):
CLIP top int(N·clip_fraction) of the whole pool, then the top int(N·vas_fraction) by fᵀSf with S the uncentred
second moment; VAS-D's first S over the whole pool, then iterative re-scoring with S recomputed from the kept set."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sieve_data as D

from djray import schema as S
from djray.config import ConfigError, parse_config
from djray.ops.sieve import build_sieve
from djray.ops.sieve.inprocess import decide, run_sieves, with_runtime_columns
from djray.ops.sieve.vas import VasParams, write_reference

MODEL = "ViT-B-16"


def _clip_top(table, fraction):
    n = table.num_rows
    keys = table.column(S.KEY).to_pylist()
    clip = table.column(S.CLIP_SCORE).to_numpy()
    order = sorted(range(n), key=lambda i: (-float(clip[i]), keys[i]))
    return order[:int(n * fraction)], keys


def reference_fixed(table, g, clip_fraction, vas_fraction):
    x = D.unit64(table, S.CLIP_IMAGE_EMBEDDING)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    s = g.T @ g / len(g)
    vas = np.einsum("ij,jk,ik->i", x, s, x)
    top, keys = _clip_top(table, clip_fraction)
    top = sorted(top, key=lambda i: (-vas[i], keys[i]))
    return {keys[i] for i in top[:int(table.num_rows * vas_fraction)]}, vas


def reference_dynamic(table, clip_fraction, vas_fraction, iters):
    x = D.unit64(table, S.CLIP_IMAGE_EMBEDDING)
    n = len(x)
    s = x.T @ x / n  # the first S: the whole pool, before the CLIP filter
    kept, keys = _clip_top(table, clip_fraction)
    target = int(n * vas_fraction)
    chunk = math.ceil((len(kept) - target) / iters)
    for it in range(iters):
        vas = np.einsum("ij,jk,ik->i", x[kept], s, x[kept])
        m = target if it == iters - 1 else max(target, len(kept) - chunk)
        ranked = sorted(range(len(kept)), key=lambda j: (-vas[j], keys[kept[j]]))
        kept = [kept[j] for j in ranked[:m]]
        s = x[kept].T @ x[kept] / len(kept)  # recomputed, as the reference code does
    return {keys[i] for i in kept}


@pytest.fixture(scope="module")
def pool():
    return D.clustered(3001, d=24, seed=7)


def test_fixed_target_matches_reference(pool, tmp_path):
    g = np.random.default_rng(1).normal(size=(500, 24)) + 0.5
    path = str(tmp_path / "ref.parquet")
    write_reference(path, g, MODEL)
    params = VasParams(clip_fraction=0.45, vas_fraction=0.3, target={"kind": "reference", "path": path, "model": MODEL})
    out = run_sieves([params], pool)
    want, vas = reference_fixed(pool, g.astype(np.float32).astype(np.float64), 0.45, 0.3)
    assert D.kept_keys(out) == want
    assert len(want) == int(3001 * 0.3)
    keys = pool.column(S.KEY).to_pylist()
    published = dict(zip(out.column(S.KEY).to_pylist(), out.column(S.VAS).to_pylist()))
    np.testing.assert_allclose([published[k] for k in keys], vas, rtol=1e-6)
    dropped = out.filter(~np.asarray(out.column("keep")))
    assert set(dropped.column("stage").to_pylist()) == {"sieve:vas"}
    assert set(dropped.column("reason").to_pylist()) == {S.Reason.LOW_VAS}
    details = dropped.column("detail").to_pylist()
    assert sum(d.startswith("clip_score") for d in details) == 3001 - int(3001 * 0.45)
    assert sum(d.startswith("vas ") for d in details) == int(3001 * 0.45) - int(3001 * 0.3)


@pytest.mark.parametrize("iters", [1, 7])
def test_vas_d_matches_reference(pool, iters):
    params = VasParams(clip_fraction=0.5, vas_fraction=0.2, target={"kind": "pool", "iterations": iters})
    out = run_sieves([params], pool)
    assert D.kept_keys(out) == reference_dynamic(pool, 0.5, 0.2, iters)


def test_vas_d_downdate_equals_recomputation(pool):
    sieve = build_sieve(VasParams(clip_fraction=0.5, vas_fraction=0.2, target={"kind": "pool", "iterations": 9}))
    table = with_runtime_columns(pool)
    decide(sieve, table)
    ids = table.column("_row_id").to_numpy()
    x = D.unit64(table, S.CLIP_IMAGE_EMBEDDING)
    kept = x[np.isin(ids, sieve.kept)]
    recomputed = kept.T @ kept / len(kept)
    assert np.abs(sieve.s_after - recomputed).max() < 1e-9
    assert not np.allclose(sieve.s_after, x.T @ x / len(x), atol=1e-6)  # S moved away from the pool's


def test_distributed_equals_in_process(pool, tmp_path, ray_cluster):
    path = str(tmp_path / "ref.parquet")
    write_reference(path, np.random.default_rng(2).normal(size=(200, 24)), MODEL)
    for i, target in enumerate(({"kind": "pool", "iterations": 4}, {"kind": "reference", "path": path, "model": MODEL})):
        params = VasParams(clip_fraction=0.4, vas_fraction=0.25, target=target)
        dist = D.run_distributed(tmp_path / f"d{i}", pool, [params], shards=3)
        local = D.by_key(run_sieves([params], pool))
        assert D.kept_keys(dist) == D.kept_keys(local)
        np.testing.assert_array_equal(dist.column(S.VAS).to_numpy(), local.column(S.VAS).to_numpy())


def test_reference_from_another_model_is_refused(pool, tmp_path):
    path = str(tmp_path / "ref.parquet")
    write_reference(path, np.ones((3, 24)), "RN50")
    params = VasParams(target={"kind": "reference", "path": path, "model": MODEL})
    with pytest.raises(ValueError, match="embedded by CLIP model 'RN50', the job's is 'ViT-B-16'"):
        run_sieves([params], pool)
    base = {"input": {"path": "/x", "format": "webdataset"}, "output": {"path": "/o"},
            "clip": {"weights": "random", "model": MODEL}}
    with pytest.raises(ConfigError, match=r"sieve\.0\.vas\.target\.model: RN50 is not the job's clip\.model"):
        parse_config({**base, "sieve": [{"op": "vas", "target": {"kind": "reference", "path": path, "model": "RN50"}}]})
    with pytest.raises(ConfigError, match=r"sieve\.0\.vas: reads clip_score, which needs a `clip:` section"):
        parse_config({**base, "clip": None, "sieve": [{"op": "vas", "target": {"kind": "pool"}}]})
    with pytest.raises(ConfigError, match="vas_fraction 0.5 exceeds clip_fraction 0.3"):
        parse_config({**base, "sieve": [{"op": "vas", "vas_fraction": 0.5, "target": {"kind": "pool"}}]})


def test_reference_from_other_weights_is_refused_and_old_files_check_the_model(pool, tmp_path):
    g = np.random.default_rng(3).normal(size=(50, 24))
    path = str(tmp_path / "ref.parquet")
    write_reference(path, g, MODEL, weights={"weights": "file:/a.pt", "state_sha256": "aaaa"})
    params = VasParams(target={"kind": "reference", "path": path, "model": MODEL})
    params.target.bind(MODEL, {"weights": "file:/b.pt", "state_sha256": "bbbb"})
    with pytest.raises(ValueError, match=r"embedded by ViT-B-16 with weights file:/a\.pt \(state_sha256 aaaa\), the "
                                         r"job's clip weights are file:/b\.pt \(state_sha256 bbbb\)"):
        run_sieves([params], pool)
    same = VasParams(target={"kind": "reference", "path": path, "model": MODEL})
    same.target.bind(MODEL, {"weights": "s3://elsewhere/a.pt", "state_sha256": "aaaa"})  # same parameters
    sieve = build_sieve(same)
    decide(sieve, with_runtime_columns(pool))
    assert sieve.info["checked"] == "model and weights" and sieve.info["reference_rows"] == 50
    old = str(tmp_path / "old.parquet")
    write_reference(old, g, MODEL)  # no weights recorded: the model alone is checked
    params = VasParams(target={"kind": "reference", "path": old, "model": MODEL})
    params.target.bind(MODEL, {"weights": "file:/b.pt", "state_sha256": "bbbb"})
    sieve = build_sieve(params)
    decide(sieve, with_runtime_columns(pool))
    assert sieve.info["checked"] == "model" and sieve.info["reference_weights"] is None
    x = g / np.linalg.norm(g, axis=1, keepdims=True)
    assert np.abs(sieve.s - x.T @ x / len(x)).max() < 1e-6  # S from the float32 file
