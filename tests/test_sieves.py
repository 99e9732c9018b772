"""`djray.sieve(name, **params).select(table)` in this process gives the pipeline's decisions for the same signals:
a run with `random` then `semdedup` (DINO embeddings), and the same two sieves applied in a notebook to the run's
signals/ as a pyarrow Table and as a pandas DataFrame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import djray
from djray import schema as S
from djray._compat import patch_torchvision
from djray.sample_data import write_sample_corpus
from governed import output_table

patch_torchvision()
pytest.importorskip("timm")
pytest.importorskip("faiss")

TINY = {"model": "test_vit", "weights": "random", "image_size": 64, "ratio": 0.5, "batch_size": 8,
        "precision": "fp32"}
RANDOM = {"keep_fraction": 0.8, "seed": 3}
SEMDEDUP = {"keep_fraction": 0.7, "n_clusters": 3, "embedding": "dino", "sample_per_centroid": 100}


@pytest.fixture(scope="module")
def selected(ray_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("sieved")
    write_sample_corpus(str(root / "corpus"), 48, 3, "webdataset", seed=8)
    manifest = djray.run({"input": {"path": str(root / "corpus"), "format": "webdataset"},
                          "output": {"path": str(root / "out")}, "vision": TINY,
                          "sieve": [{"op": "random", **RANDOM}, {"op": "semdedup", **SEMDEDUP}]}, progress=False,
                         log=lambda m: None)
    return root / "out", manifest


def _pipeline_decisions(out: Path) -> dict[str, tuple[str, str]]:
    rejects = output_table(out, "rejects").to_pylist()
    return {r[S.KEY]: (r[S.STAGE], r[S.REASON]) for r in rejects if r[S.STAGE].startswith("sieve:")}


def test_arrow_signals_give_the_pipelines_decisions(selected):
    out, manifest = selected
    signals = pq.read_table(out / "signals")
    first = djray.sieve("random", **RANDOM).select(signals)
    second = djray.sieve("semdedup", **SEMDEDUP).select(first.filter(first.column("keep")))
    mine = {r[S.KEY]: (r["stage"], r["reason"]) for t in (first, second) for r in t.to_pylist() if not r["keep"]}
    assert mine == _pipeline_decisions(out)
    data = {r[S.KEY]: r for r in output_table(out, "data").to_pylist()}
    kept = {r[S.KEY]: r for r in second.to_pylist() if r["keep"]}
    assert set(kept) == set(data) and len(kept) == manifest.rows_kept
    assert {"sieve:random", "sieve:semdedup"} <= {v[0] for v in mine.values()}  # both sieves dropped rows
    for key, row in kept.items():  # published columns too
        for column in ("semdedup_max_sim", "cluster_id", "cos_to_centroid"):
            assert row[column] == data[key][column], (key, column)


def test_pandas_in_pandas_out_same_decisions(selected):
    out, _ = selected
    frame = pd.read_parquet(out / "signals")
    shuffled = frame.sample(frac=1.0, random_state=0)  # the pipeline's order comes from src_shard / src_index
    first = djray.sieve("random", **RANDOM).kept(shuffled)
    assert isinstance(first, pd.DataFrame) and first["keep"].all()
    result = djray.sieve("semdedup", **SEMDEDUP).select(first)
    dropped = dict(zip(result.loc[~result["keep"], "key"], result.loc[~result["keep"], "reason"]))
    want = {k: r for k, (s, r) in _pipeline_decisions(out).items() if s == "sieve:semdedup"}
    assert dropped == want and set(dropped.values()) == {S.Reason.SEMDEDUP_DUPLICATE}


def test_table_order_without_source_columns():
    table = pa.table({"key": [f"k{i}" for i in range(10)], "img_sha256": ["a", "b", "a", "c", "b", "d", "e", "a",
                                                                          "f", "g"]})
    result = djray.sieve("exact_dedup").select(table)
    assert result.column("keep").to_pylist() == [True, True, False, True, False, True, True, False, True, True]
    assert np.array_equal(result.column("key").to_numpy(zero_copy_only=False), table.column("key").to_numpy(
        zero_copy_only=False))


def test_unknown_sieve_and_bad_params_are_config_errors():
    with pytest.raises(djray.ConfigError, match="unknown op 'semdup'"):
        djray.sieve("semdup")
    with pytest.raises(djray.ConfigError, match=r"sieve\.semdedup\.n_clusters"):
        djray.sieve("semdedup", eps=0.1, n_clusters=0)
