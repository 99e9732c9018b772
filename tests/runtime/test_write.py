"""Phase C's final write: how shards are packed into tasks, and that the packing never changes what is written."""

from __future__ import annotations

import pyarrow.parquet as pq

from djray import pipeline
from djray.config import parse_config
from djray.runtime import write
from djray.sample_data import write_sample_corpus


def test_finalize_groups_balance_bytes_and_keep_large_items_alone():
    assert write.finalize_groups([5, 5, 20, 3, 4], 3) == [[0, 1, 2], [3, 4]]  # target ceil(37/3)=13
    assert write.finalize_groups([5, 5, 20, 3, 4], 5) == [[0, 1], [2], [3, 4]]  # target 8
    assert write.finalize_groups([5, 5, 20, 3, 4], 100) == [[0], [1], [2], [3], [4]]
    assert write.finalize_groups([5, 5, 20, 3, 4], 1) == [[0, 1, 2, 3, 4]]
    assert write.finalize_groups([], 4) == []
    groups = write.finalize_groups([7] * 40, 8)
    assert [i for g in groups for i in g] == list(range(40)) and len(groups) == 8


def test_write_tasks_one_per_cpu_fewer_for_a_small_input_more_for_a_large_one():
    mib = 1 << 20
    assert write.write_tasks([12 * mib] * 6, cpus=2) == 1  # 72 MiB: a second task is not worth a worker start
    assert write.write_tasks([50 * mib] * 6, cpus=2) == 2  # 300 MiB
    assert write.write_tasks([50 * mib] * 6, cpus=64) == 2  # 300 MiB: one task per 128 MiB, not one per CPU
    assert write.write_tasks([500 * mib] * 40, cpus=16) == 79  # ≤ 256 MiB per task
    assert write.write_tasks([3 * mib] * 2, cpus=8) == 1
    assert write.write_tasks([], cpus=4) == 0


def test_packing_and_concurrency_never_change_the_output(ray_cluster, tmp_path, monkeypatch):
    corpus = tmp_path / "corpus"
    write_sample_corpus(str(corpus), 90, 6, "webdataset", seed=5)
    outputs = {}
    for name, bytes_per_task, concurrent in (("alone", 1, None), ("one-at-a-time", 1, 1), ("packed", 1 << 40, None)):
        monkeypatch.setattr(write, "BYTES_PER_TASK", bytes_per_task)
        out = tmp_path / name
        manifest = pipeline.run(parse_config({"input": {"path": str(corpus), "format": "webdataset"},
                                              "output": {"path": str(out)},
                                              "ray": {"max_concurrent_finalize": concurrent}}),
                                progress=False, log=lambda m: None)
        assert manifest["status"] == "complete" and manifest["shards_done"] == 6 and manifest["accounting_ok"]
        outputs[name] = {f"{kind}/{f.name}": pq.read_table(f).to_pylist()
                         for kind in ("data", "rejects", "signals") for f in sorted((out / kind).glob("*.parquet"))}
        assert len(list((out / "_djray" / "done").glob("*/*.json"))) == 6
    assert outputs["alone"] == outputs["one-at-a-time"] == outputs["packed"]
    assert sum(len(v) for k, v in outputs["alone"].items() if k.startswith("data/")) > 60
