"""key_dedup, exact_dedup and random in one process, against references written from their definitions."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pytest

from djray import schema as S
from djray.ops.sieve import build_sieve
from djray.ops.sieve.exact_dedup import ExactDedupParams
from djray.ops.sieve.inprocess import run_sieves
from djray.ops.sieve.key_dedup import KeyDedupParams
from djray.ops.sieve.random import RandomParams


def _pool(n: int = 600, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    keys = [f"k{int(i)}" for i in rng.integers(0, n * 3 // 4, n)]  # repeated keys
    sha = [f"h{int(i)}" for i in rng.integers(0, n // 2, n)]  # repeated images
    reason = [("corrupt_image" if r < 0.1 else None) for r in rng.random(n)]
    return pa.table({S.KEY: keys, S.IMG_SHA256: sha, S.REASON: pa.array(reason, pa.string()),
                     "_row_id": np.arange(n, dtype=np.int64), S.SRC_SHARD: ["s"] * n,
                     S.SRC_INDEX: np.arange(n, dtype=np.int64)})


def _first_unique(values: list, alive: list[bool]) -> list[bool]:
    seen, keep = set(), []
    for v, a in zip(values, alive):
        keep.append(a and v not in seen)
        if a:
            seen.add(v)
    return keep


def test_key_then_exact_dedup_keep_first_alive_occurrences():
    pool = _pool()
    out = run_sieves([build_sieve(KeyDedupParams()), build_sieve(ExactDedupParams())], pool)
    alive = [r is None for r in pool.column(S.REASON).to_pylist()]
    after_keys = _first_unique(pool.column(S.KEY).to_pylist(), alive)
    expect = _first_unique(pool.column(S.IMG_SHA256).to_pylist(), after_keys)
    alive_rows = [i for i, a in enumerate(alive) if a]
    assert out.column("_row_id").to_pylist() == alive_rows
    assert out.column("keep").to_pylist() == [expect[i] for i in alive_rows]
    stages = {(s, r) for s, r in zip(out.column("stage").to_pylist(), out.column("reason").to_pylist()) if s}
    assert stages == {("sieve:key_dedup", "duplicate_key"), ("sieve:exact_dedup", "duplicate_image")}


@pytest.mark.parametrize("fraction, seed", [(0.5, 0), (0.13, 7), (1.0, 1), (0.001, 2)])
def test_random_keeps_exactly_n_smallest_hashes(fraction, seed):
    n = 777
    keys = [f"sample-{i:05d}" for i in range(n)]
    table = pa.table({S.KEY: keys, "_row_id": np.arange(n, dtype=np.int64)})
    out = run_sieves([build_sieve(RandomParams(keep_fraction=fraction, seed=seed))], table)

    def h(key: str) -> int:
        return int.from_bytes(hashlib.blake2b(f"{seed}\x1f{key}".encode(), digest_size=8).digest(), "little")

    want = int(np.floor(fraction * n + 0.5))
    expect = set(sorted(keys, key=lambda k: (h(k), k))[:want])
    kept = {k for k, keep in zip(out.column(S.KEY).to_pylist(), out.column("keep").to_pylist()) if keep}
    assert kept == expect and len(kept) == want
    # another order of the same rows: the same sample
    shuffled = table.take(pa.array(np.random.default_rng(3).permutation(n)))
    again = run_sieves([build_sieve(RandomParams(keep_fraction=fraction, seed=seed))],
                       shuffled.set_column(1, "_row_id", pa.array(np.arange(n, dtype=np.int64))))
    assert {k for k, keep in zip(again.column(S.KEY).to_pylist(), again.column("keep").to_pylist()) if keep} == expect
