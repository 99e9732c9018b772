"""cluster and d4 against NumPy references written here from seed-algorithms §7.2 / §7.5 (k-means given to them)."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pytest
import sieve_data as D

from djray import schema as S
from djray.ops.sieve import build_sieve, expand_steps
from djray.ops.sieve.cluster import ClusterParams
from djray.ops.sieve.d4 import D4Params
from djray.ops.sieve.inprocess import decide, run_sieves, with_runtime_columns
from djray.ops.sieve.semdedup import SemDedupParams


def _centroids(params, table: pa.Table, step: int = 0) -> np.ndarray:
    sieve = build_sieve(expand_steps([params])[step])
    decide(sieve, with_runtime_columns(table))
    return sieve.centroids


def _assign(e: np.ndarray, centroids: np.ndarray):
    s = e @ centroids.T
    a = s.argmax(axis=1)
    return a, s[np.arange(len(e)), a].astype(np.float32)


def reference_quotas(sizes: dict[int, int], n: int) -> dict[int, int]:
    """n/K per cluster, capped at its size; what is left is spread again over the clusters that still have rows,
    until fewer rows are left than open clusters: those go one each, smallest cluster id first."""
    quota = {c: 0 for c in sizes}
    left = n
    while left > 0:
        open_ = sorted(c for c in sizes if quota[c] < sizes[c])
        if not open_:
            break
        share = left // len(open_)
        if share == 0:
            for c in open_[:left]:
                quota[c] += 1
            break
        for c in open_:
            add = min(share, sizes[c] - quota[c])
            quota[c] += add
            left -= add
    return quota


def blake_u(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}\x1f{key}".encode(), digest_size=8).digest(), "little")


@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.9])
def test_cluster_matches_reference(fraction):
    table = D.clustered(3000, k=9, seed=21)
    params = ClusterParams(keep_fraction=fraction, n_clusters=9, seed=4)
    out = run_sieves([params], table)
    keys = out.column(S.KEY).to_pylist()
    cluster, cos = _assign(D.unit64(out), _centroids(params, table))
    n = int(np.floor(fraction * len(keys) + 0.5))
    sizes = {int(c): int((cluster == c).sum()) for c in np.unique(cluster)}
    quota = reference_quotas(sizes, n)
    keep = np.zeros(len(keys), bool)
    for c, q in quota.items():
        members = sorted(np.flatnonzero(cluster == c), key=lambda i: (blake_u(4, keys[i]), keys[i]))
        keep[members[:q]] = True
    assert out.column("keep").to_pylist() == keep.tolist() and keep.sum() == n
    assert out.column("cluster_id").to_pylist() == cluster.tolist()
    assert np.array_equal(out.column("cos_to_centroid").to_numpy(), cos)
    assert len(set(quota.values()) - set(sizes.values())) <= 2  # uniform level (+1), or capped at the size


def test_water_filling_caps_small_clusters():
    assert reference_quotas({0: 2, 1: 50, 2: 50, 3: 1}, 40) == {0: 2, 1: 19, 2: 18, 3: 1}
    from djray.ops.sieve.cluster import water_fill
    assert water_fill({0: 2, 1: 50, 2: 50, 3: 1}, 40) == {0: 2, 1: 19, 2: 18, 3: 1}


def largest_remainder(sizes: dict[int, int], n: int) -> dict[int, int]:
    total = sum(sizes.values())
    exact = {c: n * s / total for c, s in sizes.items()}
    quota = {c: int(np.floor(v)) for c, v in exact.items()}
    for c in sorted(sizes, key=lambda c: (-(exact[c] - quota[c]), c))[: n - sum(quota.values())]:
        quota[c] += 1
    return quota


@pytest.mark.parametrize("ranking", ["global", "per_cluster"])
def test_d4_matches_reference(ranking):
    table = D.clustered(3000, k=10, seed=31)
    params = D4Params(keep_fraction=0.45, dedup_fraction=0.75, n_clusters=10, proto_clusters=7, ranking=ranking)
    out = run_sieves([params], table)
    keys = out.column(S.KEY).to_pylist()
    # 1. SemDeDup at dedup_fraction: checked against its own reference in test_sieve_semdedup; here, by counts
    dedup = run_sieves([SemDedupParams(keep_fraction=0.75, n_clusters=10)], table)
    assert D.kept_keys(dedup) >= D.kept_keys(out)
    survivors = dedup.filter(dedup.column("keep"))
    s = survivors.num_rows
    assert s == int(np.floor(0.75 * 3000 + 0.5))
    # 2-3. a fresh k-means on the survivors; prune the most prototypical to keep_fraction of the pool
    cluster, cos = _assign(D.unit64(survivors), _centroids(params, survivors.select(table.column_names), step=2))
    skeys = survivors.column(S.KEY).to_pylist()
    n = int(np.floor(0.45 / 0.75 * s + 0.5))
    keep = np.zeros(s, bool)
    if ranking == "global":
        keep[sorted(range(s), key=lambda i: (cos[i], skeys[i]))[:n]] = True
    else:
        sizes = {int(c): int((cluster == c).sum()) for c in np.unique(cluster)}
        for c, q in largest_remainder(sizes, n).items():
            members = sorted(np.flatnonzero(cluster == c), key=lambda i: (cos[i], skeys[i]))
            keep[members[:q]] = True
    assert D.kept_keys(out) == {k for k, kk in zip(skeys, keep) if kk}
    assert len(D.kept_keys(out)) == n
    rows = {r[S.KEY]: r for r in out.to_pylist()}
    assert [rows[k]["d4_cluster_id"] for k in skeys] == cluster.tolist()
    reasons = {r["reason"] for r in rows.values()} - {None}
    assert reasons == {S.Reason.SEMDEDUP_DUPLICATE, S.Reason.D4_PROTOTYPICAL}
    assert {r["stage"] for r in rows.values()} - {None} == {"sieve:d4"}
    assert sum(1 for k in keys if rows[k]["keep"]) == n
