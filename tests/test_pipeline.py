"""Pipeline internals that are not a stage of their own: how the final write is split into tasks."""

from __future__ import annotations

import pyarrow.parquet as pq

from djray import pipeline
from djray.config import parse_config
from djray.sample_data import write_sample_corpus


def test_finalize_groups_pack_small_shards_and_keep_large_ones_alone():
    rows = {"a": 5, "b": 5, "c": 20, "d": 3, "e": 4}
    assert pipeline.finalize_groups(list(rows), rows, 10) == [["a", "b"], ["c"], ["d", "e"]]
    assert pipeline.finalize_groups(list(rows), rows, 1) == [[s] for s in rows]
    assert pipeline.finalize_groups(list(rows), rows, 1000) == [list(rows)]
    assert pipeline.finalize_groups([], {}, 10) == []


def test_grouped_final_write_equals_one_task_per_shard(ray_cluster, tmp_path):
    corpus = tmp_path / "corpus"
    write_sample_corpus(str(corpus), 90, 6, "webdataset", seed=5)
    outputs = {}
    for rows_per_task in (1, 40, 10_000):  # 6 tasks, 3 tasks, 1 task
        out = tmp_path / f"out-{rows_per_task}"
        manifest = pipeline.run(parse_config({"input": {"path": str(corpus), "format": "webdataset"},
                                              "output": {"path": str(out)},
                                              "ray": {"finalize_rows_per_task": rows_per_task}}),
                                progress=False, log=lambda m: None)
        assert manifest["status"] == "complete" and manifest["shards_done"] == 6 and manifest["accounting_ok"]
        outputs[rows_per_task] = {f"{kind}/{f.name}": pq.read_table(f).to_pylist()
                                  for kind in ("data", "rejects") for f in sorted((out / kind).glob("*.parquet"))}
        assert len(list((out / "_djray" / "done").glob("*.json"))) == 6
    assert outputs[1] == outputs[40] == outputs[10_000]
    assert sum(len(v) for k, v in outputs[1].items() if k.startswith("data/")) > 60
