"""semdedup against a brute-force NumPy SemDeDup written here from seed-algorithms §7.4 (k-means given to it)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import sieve_data as D

from djray import schema as S
from djray.ops.sieve import build_sieve, expand_steps
from djray.ops.sieve import semdedup as SD
from djray.ops.sieve.inprocess import decide, run_sieves, with_runtime_columns
from djray.ops.sieve.semdedup import SemDedupParams


def reference_m(e: np.ndarray, keys: list[str], centroids: np.ndarray, keep: str, u: np.ndarray | None = None):
    """Per row: cluster (first argmax of float64 cosines), cos (float32), M (float32, NaN for a cluster's first) and
    the row M comes from (-1). Full c×c similarity matrix per cluster, as the paper's code does."""
    sims = e @ centroids.T
    cluster = sims.argmax(axis=1)
    cos = sims[np.arange(len(e)), cluster].astype(np.float32)
    m = np.full(len(e), np.nan, np.float32)
    partner = np.full(len(e), -1)
    for c in np.unique(cluster):
        members = np.flatnonzero(cluster == c)
        if keep == "hard":
            order = sorted(members, key=lambda i: (cos[i], keys[i]))
        elif keep == "easy":
            order = sorted(members, key=lambda i: (-cos[i], keys[i]))
        else:
            order = sorted(members, key=lambda i: (u[i], keys[i]))
        order = np.array(order)
        s = e[order] @ e[order].T
        for j in range(1, len(order)):
            i = int(np.argmax(s[:j, j]))
            m[order[j]], partner[order[j]] = np.float32(s[i, j]), order[i]
    return cluster, cos, m, partner


def reference_keep(m: np.ndarray, keys: list[str], eps: float | None, fraction: float | None) -> np.ndarray:
    if eps is not None:
        return ~(m.astype(np.float64) > 1.0 - eps)  # NaN (no earlier row) compares False: kept
    n = int(np.floor(fraction * len(m) + 0.5))
    order = sorted(range(len(m)), key=lambda i: (-np.inf if np.isnan(m[i]) else m[i], keys[i]))
    keep = np.zeros(len(m), bool)
    keep[order[:n]] = True
    return keep


def _fitted_scan(table: pa.Table, params: SemDedupParams):
    scan = build_sieve(expand_steps([params])[0])
    decide(scan, with_runtime_columns(table))
    return scan


@pytest.mark.parametrize("keep", ["hard", "easy", "random"])
@pytest.mark.parametrize("rule", [{"eps": 0.03}, {"keep_fraction": 0.7}])
def test_matches_reference_in_process(keep, rule):
    table = D.clustered(3000, seed=1)
    params = SemDedupParams(n_clusters=12, keep=keep, seed=5, **rule)
    out = run_sieves([params], table)
    keys = out.column(S.KEY).to_pylist()
    centroids = _fitted_scan(table, params).centroids
    e = D.unit64(out)
    u = None
    if keep == "random":
        from djray.ops.sieve.base import stable_hash64
        u = stable_hash64(5, keys)
    cluster, cos, m, partner = reference_m(e, keys, centroids, keep, u)
    assert out.column("cluster_id").to_pylist() == cluster.tolist()
    assert np.array_equal(out.column("cos_to_centroid").to_numpy(), cos)
    got_m = out.column("semdedup_max_sim").to_numpy(zero_copy_only=False)
    assert np.array_equal(np.isnan(got_m), np.isnan(m)) and np.array_equal(got_m[~np.isnan(m)], m[~np.isnan(m)])
    near = out.column("semdedup_nearest").to_pylist()
    assert [None if p < 0 else keys[p] for p in partner] == [n and n["key"] for n in near]
    expected = reference_keep(m, keys, rule.get("eps"), rule.get("keep_fraction"))
    assert out.column("keep").to_pylist() == expected.tolist()
    assert (~expected).sum() > 40  # the planted duplicates at least
    if "keep_fraction" in rule:
        assert expected.sum() == int(np.floor(0.7 * 3000 + 0.5))


def test_exact_duplicates_keep_the_first_in_sort_order_and_detail_names_it():
    table = D.clustered(2000, seed=2, exact=30, near=0)
    out = run_sieves([SemDedupParams(n_clusters=8, eps=0.001)], table)
    dropped = out.filter(pa.compute.invert(out.column("keep")))
    assert dropped.num_rows >= 30
    rows = {r[S.KEY]: r for r in out.to_pylist()}
    for r in dropped.to_pylist():
        near = r["semdedup_nearest"]
        assert r["detail"] == (f"near-duplicate of key {near['key']} ({near['src_shard']}#{near['src_index']}, "
                               f"cos {r['semdedup_max_sim']:.3f})")
        assert r["semdedup_max_sim"] > 0.999 and r["reason"] == S.Reason.SEMDEDUP_DUPLICATE
        twin = rows[near["key"]]  # hard: the earlier row is farther from the centroid, or as far with a smaller key
        assert (twin["cos_to_centroid"], twin[S.KEY]) < (r["cos_to_centroid"], r[S.KEY])


def test_blocked_similarity_equals_full_matrix_at_any_block(monkeypatch):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(700, 24))
    x[400:450] = x[:50]  # exact ties: the first earlier copy wins
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    full = x @ x.T
    want_m = np.array([-np.inf] + [full[:j, j].max() for j in range(1, 700)])
    want_p = np.array([-1] + [int(np.argmax(full[:j, j])) for j in range(1, 700)])
    for block in (7, 64, 4096):
        monkeypatch.setattr(SD, "BLOCK", block)
        m, p = SD.max_earlier(x)
        assert np.array_equal(p, want_p)
        assert np.array_equal(m.astype(np.float32), want_m.astype(np.float32))


def test_another_eps_reuses_the_scan():
    """The scan's parameters (hence its step fingerprint) leave ε out: only the cut differs."""
    a, b = (expand_steps([SemDedupParams(n_clusters=8, eps=e)]) for e in (0.02, 0.1))
    assert a[0] == b[0] and a[1] != b[1]
    table = D.clustered(1500, seed=4)
    loose, strict = (D.kept_keys(run_sieves([SemDedupParams(n_clusters=8, eps=e)], table)) for e in (0.02, 0.1))
    assert strict < loose


@pytest.mark.slow
def test_20k_rows_equal_the_reference():
    table = D.clustered(20000, d=48, k=40, seed=7, exact=300, near=500)
    params = SemDedupParams(n_clusters=40, eps=0.02)
    out = run_sieves([params], table)
    keys = out.column(S.KEY).to_pylist()
    _, _, m, _ = reference_m(D.unit64(out), keys, _fitted_scan(table, params).centroids, "hard")
    assert out.column("keep").to_pylist() == reference_keep(m, keys, 0.02, None).tolist()
