"""The sieve contract's building blocks, each against a definition written here."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from djray import schema as S
from djray.ops.sieve.base import (ROW_ID, first_of_each, keep_count, sample_filter, sample_order, stable_hash64,
                                  top_n_mask)


def _h(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}\x1f{key}".encode(), digest_size=8).digest(), "little")


def test_keep_count_rounds_half_up():
    assert [keep_count(0.5, n) for n in (0, 1, 2, 3, 5, 117)] == [0, 1, 1, 2, 3, 59]
    assert keep_count(1.0, 10) == 10 and keep_count(0.3, 10) == 3 and keep_count(0.25, 2) == 1


def test_stable_hash_is_blake2b_of_seed_and_value():
    keys = ["a", "b", "ü", ""]
    assert stable_hash64(7, keys).tolist() == [_h(7, k) for k in keys]
    assert stable_hash64(8, keys).tolist() != stable_hash64(7, keys).tolist()


def test_top_n_mask_orders_by_score_then_tie_keys():
    score = np.array([0.5, 0.9, 0.5, 0.5, 0.1], np.float32)
    keys = pa.array(["d", "a", "b", "c", "e"])
    assert top_n_mask(score, 3, [keys]).tolist() == [False, True, True, True, False]
    assert top_n_mask(score, 2, [keys]).tolist() == [False, True, True, False, False]
    assert top_n_mask(score, 0, [keys]).tolist() == [False] * 5
    assert top_n_mask(score, 9, [keys]).tolist() == [True] * 5
    rng = np.random.default_rng(0)
    s = rng.integers(0, 4, 300).astype(np.float32)
    k = [f"k{rng.integers(1e9)}" for _ in range(300)]
    order = sorted(range(300), key=lambda i: (-s[i], k[i]))
    expect = np.zeros(300, bool)
    expect[order[:123]] = True
    assert (top_n_mask(s, 123, [pa.array(k)]) == expect).all()


def test_seeded_sample_depends_on_keys_only():
    keys = [f"key-{i}" for i in range(2000)]
    rows = pa.table({S.KEY: keys, ROW_ID: np.arange(2000)})
    sample = sample_order([sample_filter(rows, 5, 0.1)])
    expect = sorted((_h(5, k), k) for k in keys if _h(5, k) < int(0.1 * 2**64))
    assert sample.column(S.KEY).to_pylist() == [k for _, k in expect]
    assert 150 < sample.num_rows < 250
    # in pieces, in any order of shards: the same rows in the same order
    pieces = [sample_filter(rows.slice(i, 500), 5, 0.1) for i in (1500, 0, 1000, 500)]
    assert sample_order(pieces).equals(sample)


def test_first_of_each_keeps_the_first_by_row_id_and_names_it():
    rows = pa.table({ROW_ID: [5, 1, 9, 3], S.KEY: ["e", "a", "i", "c"], S.SRC_SHARD: ["s1", "s0", "s2", "s0"],
                     S.SRC_INDEX: [5, 1, 9, 3], "v": ["x", "y", "x", "x"]})
    d = first_of_each(rows, "v", "dup of {key} at {shard}#{index}")
    # sorted by row id: 1 (y), 3 (x, first), 5 (x), 9 (x)
    assert d.keep.tolist() == [True, True, False, False]
    assert d.detail == [None, None, "dup of c at s0#3", "dup of c at s0#3"]
