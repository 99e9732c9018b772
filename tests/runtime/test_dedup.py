"""Duplicate-key decisions against a brute-force reference."""

from __future__ import annotations

import random

import pyarrow as pa

from djray import schema as S
from djray.runtime.dedup import find_duplicate_keys, losers


def _brute(rows):
    first = {}
    out = {}
    for key, shard, order, index in sorted(rows, key=lambda r: (r[2], r[3])):
        if key in first:
            out[(shard, index)] = f"key first seen at {first[key][0]}#{first[key][1]}"
        else:
            first[key] = (shard, index)
    return out


def test_losers_match_brute_force_on_random_keys():
    rng = random.Random(7)
    rows = []
    for order in range(5):
        shard = f"s{order}.tar"
        for index in range(200):
            rows.append((f"k{rng.randrange(300)}", shard, order, index))
    rng.shuffle(rows)
    table = pa.table({S.KEY: [r[0] for r in rows], S.SRC_SHARD: [r[1] for r in rows],
                      S.SHARD_ORDER: [r[2] for r in rows], S.SRC_INDEX: [r[3] for r in rows]})
    got = losers(table)
    result = {(s, i): d for s, i, d in zip(got["src_shard"].to_pylist(), got["src_index"].to_pylist(),
                                           got["detail"].to_pylist())}
    assert result == _brute(rows)
    assert len(result) > 100  # the case is not trivial


def test_map_reduce_over_many_tasks_and_partitions_matches_brute_force(ray_cluster, tmp_path):
    """The distributed path (several map tasks, several hash partitions) gives the same losers as one pass."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    rng = random.Random(11)
    rows, fragments = [], []
    for order in range(6):
        shard = f"s{order}.tar"
        for part in range(2):  # two staged fragments per shard
            chunk = [(f"k{rng.randrange(150)}", shard, order, part * 50 + i) for i in range(50)]
            rows += chunk
            path = str(tmp_path / f"{order}-{part}.parquet")
            pq.write_table(pa.table({S.KEY: [r[0] for r in chunk], S.SRC_SHARD: [r[1] for r in chunk],
                                     S.SRC_INDEX: [r[3] for r in chunk], S.SHARD_ORDER: [r[2] for r in chunk],
                                     S.REJECT_REASON: pa.nulls(len(chunk), pa.string())}), path)
            fragments.append(path)
    expected: dict[str, dict[int, str]] = {}
    for (shard, index), detail in _brute(rows).items():
        expected.setdefault(shard, {})[index] = detail
    fs = pafs.LocalFileSystem()
    spread = find_duplicate_keys(fragments, fs, len(rows), rows_per_map_task=100, rows_per_partition=150)
    assert spread == expected  # 6 map tasks, 5 partitions
    assert find_duplicate_keys(fragments, fs, len(rows)) == expected  # one map task, one partition
    assert sum(map(len, expected.values())) > 300  # the case is not trivial


def test_no_duplicates_and_tiny_inputs():
    t = pa.table({S.KEY: ["a", "b"], S.SRC_SHARD: ["x", "x"], S.SHARD_ORDER: [0, 0], S.SRC_INDEX: [0, 1]})
    assert losers(t).num_rows == 0
    assert losers(t.slice(0, 1)).num_rows == 0


def test_rejected_first_copy_does_not_shadow_a_usable_later_copy(ray_cluster, tmp_path):
    """Only alive rows compete for a key: a corrupt first copy keeps its own reason, the later good copy is kept."""
    import corpus
    import pyarrow.parquet as pq

    from djray import pipeline
    from djray.config import parse_config

    corpus.write_tar(tmp_path / "in" / "a.tar", corpus.sample_members("k1", image=b"not an image")
                     + corpus.sample_members("k2"))
    corpus.write_tar(tmp_path / "in" / "b.tar", corpus.sample_members("k1") + corpus.sample_members("k2"))
    manifest = pipeline.run(parse_config({"input": {"path": str(tmp_path / "in"), "format": "webdataset"},
                                          "output": {"path": str(tmp_path / "out")}}), progress=False,
                            log=lambda m: None)
    assert manifest["rejected_by_reason"] == {"corrupt_image": 1, "duplicate_key": 1}
    kept = {(r["key"], r["src_shard"]) for f in ("a", "b")
            for r in pq.read_table(tmp_path / "out" / "data" / f"{f}.parquet").to_pylist()}
    assert kept == {("k2", "a.tar"), ("k1", "b.tar")}
    dup = pq.read_table(tmp_path / "out" / "rejects" / "b.parquet").to_pylist()
    assert [(r["key"], r["reason"], r["detail"]) for r in dup] == [("k2", "duplicate_key", "key first seen at a.tar#1")]
