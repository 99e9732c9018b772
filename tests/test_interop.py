"""The governed outputs read as they are by the tools people already use: DuckDB (SQL over scalar and list columns,
the footer's key-value metadata), pandas, Hugging Face `datasets` (offline), Ray Data and PyArrow datasets. The
queries are those of docs/outputs.md; every answer is checked against the rows read with plain pyarrow."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from djray import schema as S
from djray._compat import patch_torchvision
from governed import BAD, governed_output

patch_torchvision()
pytest.importorskip("timm")
duckdb = pytest.importorskip("duckdb")
pd = pytest.importorskip("pandas")


@pytest.fixture(scope="module")
def out(ray_cluster, tmp_path_factory) -> Path:
    path, manifest = governed_output(tmp_path_factory.mktemp("interop"))
    assert manifest.complete
    return path


def _rows(out: Path, kind: str) -> list[dict]:
    return [r for f in sorted((out / kind).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def test_duckdb_sql_over_data_rejects_and_signals(out):
    con = duckdb.connect()
    data, rejects = _rows(out, "data"), _rows(out, "rejects")
    kept = con.sql(f"""
        WITH all_rows AS (SELECT src_shard, 1 AS kept FROM '{out}/data/*.parquet'
                          UNION ALL SELECT src_shard, 0 FROM '{out}/rejects/*.parquet')
        SELECT src_shard, avg(kept) AS kept_ratio, count(*) AS n FROM all_rows GROUP BY src_shard ORDER BY src_shard
    """).fetchall()
    per_shard = Counter(r["src_shard"] for r in data)
    total = per_shard + Counter(r["src_shard"] for r in rejects)
    assert kept == [(s, per_shard[s] / total[s], total[s]) for s in sorted(total)]
    reasons = con.sql(f"SELECT stage, reason, count(*) FROM '{out}/rejects/*.parquet' GROUP BY ALL ORDER BY ALL")
    assert reasons.fetchall() == sorted((s, r, n) for (s, r), n in Counter((r["stage"], r["reason"])
                                                                            for r in rejects).items())
    # list columns: patches kept per image, mean score, evidence labels (unnest)
    lists = con.sql(f"""SELECT key, len(patch_idx), grid_h * grid_w, list_max(patch_scores), caption_source
                        FROM '{out}/data/*.parquet' ORDER BY key""").fetchall()
    assert lists == sorted((r["key"], len(r["patch_idx"]), r["grid_h"] * r["grid_w"], max(r["patch_scores"]),
                            r["caption_source"]) for r in data)
    labels = con.sql(f"""SELECT label, count(*) FROM (SELECT unnest(vis_evidence) AS label
                         FROM '{out}/data/*.parquet') GROUP BY label ORDER BY label""").fetchall()
    assert labels == sorted(Counter(label for r in data for label in r["vis_evidence"]).items())
    alive = con.sql(f"SELECT count(*) FILTER (WHERE reason IS NULL), len(any_value(vis_embedding)) "
                    f"FROM '{out}/signals/*.parquet'").fetchall()[0]
    assert alive[0] == sum(1 for r in _rows(out, "signals") if r["reason"] is None) and alive[1] > 0
    footer = con.sql(f"""SELECT DISTINCT decode(value) FROM parquet_kv_metadata('{out}/*/*.parquet')
                         WHERE decode(key) = 'djray.schema_version'""").fetchall()
    assert footer == [(str(S.SCHEMA_VERSION),)]


def test_pandas_patch_mask_and_rejects(out):
    data = pd.read_parquet(out / "data")
    row = data.sort_values("key").iloc[0]
    mask = np.zeros(row.grid_h * row.grid_w, dtype=bool)
    mask[row.patch_idx] = True
    mask = mask.reshape(row.grid_h, row.grid_w)
    want = min(_rows(out, "data"), key=lambda r: r["key"])
    assert mask.sum() == len(want["patch_idx"]) and mask.shape == (want["grid_h"], want["grid_w"])
    assert sorted(np.flatnonzero(mask.ravel()).tolist()) == sorted(want["patch_idx"])
    rejects = pd.read_parquet(out / "rejects")
    bad = rejects.set_index("key").loc[list(BAD), "reason"].to_dict()
    assert bad == BAD
    assert pq.read_schema(next((out / "data").glob("*.parquet"))).metadata[S.META_SCHEMA_VERSION] == \
        str(S.SCHEMA_VERSION).encode()


def test_hugging_face_datasets_offline(out, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    ds = datasets.load_dataset("parquet", data_files={"train": str(out / "data" / "*.parquet")},
                               split="train", cache_dir=str(tmp_path / "hf"))
    data = _rows(out, "data")
    assert ds.num_rows == len(data)
    assert set(ds.column_names) == set(pq.read_schema(next((out / "data").glob("*.parquet"))).names)
    by_key = {r["key"]: r for r in data}
    for row in ds.select_columns(["key", "patch_idx", "vis_evidence", "caption"]):
        want = by_key[row["key"]]
        assert (row["patch_idx"], row["vis_evidence"], row["caption"]) == \
            (want["patch_idx"], want["vis_evidence"], want["caption"])
    wide = ds.filter(lambda r: r["img_width"] >= 200)
    assert wide.num_rows == sum(1 for r in data if r["img_width"] >= 200)


def test_ray_data_and_pyarrow_dataset(out):
    import pyarrow.compute as pc
    import pyarrow.dataset as pads
    import ray

    data = _rows(out, "data")
    counts = ray.data.read_parquet(str(out / "data")).groupby("caption_source").count().take_all()
    assert {r["caption_source"]: r["count()"] for r in counts} == Counter(r["caption_source"] for r in data)
    signals = ray.data.read_parquet(str(out / "signals"))
    assert signals.count() == len(data) + len(_rows(out, "rejects"))  # every input row has signals
    dataset = pads.dataset(out / "rejects", format="parquet")
    assert dataset.schema.metadata[S.META_SCHEMA_VERSION] == str(S.SCHEMA_VERSION).encode()
    decode = dataset.to_table(columns=["key", "reason"], filter=pc.field("stage") == "decode")
    assert dict(zip(*decode.to_pydict().values())) == BAD | {
        r["key"]: r["reason"] for r in _rows(out, "rejects") if r["stage"] == "decode"}
    assert isinstance(decode, pa.Table)
