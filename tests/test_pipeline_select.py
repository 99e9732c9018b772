"""Selection end to end: a new output from another run's signals (no model, no phase A), and a source that changed
since its signals were computed is never mixed into an output."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest

from djray import pipeline
from djray import schema as S
from djray.config import ConfigError, parse_config
from djray.patches import select_patches
from djray.sample_data import write_sample_corpus
from governed import output_table

TINY = {"model": "test_vit", "weights": "random", "image_size": 64, "ratio": 0.5, "batch_size": 8,
        "precision": "fp32"}


def _run(raw: dict) -> dict:
    return pipeline.run(parse_config(raw), progress=False, log=lambda m: None)


@pytest.fixture(scope="module")
def juiced(ray_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("juiced")
    write_sample_corpus(str(root / "corpus"), 60, 3, "webdataset", seed=21)
    raw = {"input": {"path": str(root / "corpus"), "format": "webdataset"}, "output": {"path": str(root / "a")},
           "vision": TINY}
    return root, raw, _run(raw)


def test_a_new_output_from_another_runs_signals(juiced):
    root, raw, first = juiced
    second = {**raw, "output": {"path": str(root / "b")}, "signals": {"from": str(root / "a")},
              "vision": {**TINY, "ratio": 0.25}, "sieve": [{"op": "random", "keep_fraction": 0.5, "seed": 2}]}
    manifest = _run(second)
    assert manifest["status"] == "complete" and manifest["accounting_ok"]
    assert manifest["run"]["rows_processed"] == 0 and "stream_s" in manifest["run"]["phases_s"]
    assert not (root / "b" / "_djray" / "sealed").exists() and not (root / "b" / "_djray" / "models").exists()
    assert manifest["signals_sha256"] == first["signals_sha256"] and manifest["signals_from"] == str(root / "a")
    assert manifest["models"]["vision"]["params"]["model"] == "test_vit"  # phase A's model, from the source run
    a, b = output_table(root / "a", "data"), output_table(root / "b", "data")
    assert set(b.column(S.KEY).to_pylist()) < set(a.column(S.KEY).to_pylist())
    assert manifest["rows_kept"] == b.num_rows == sum(
        1 for r in manifest["selection"] if r["op"] == "random" for _ in range(r["kept"]))
    by_key = {r[S.KEY]: r for r in a.to_pylist()}
    for row in b.to_pylist():
        src = by_key[row[S.KEY]]
        assert row[S.IMAGE] == src[S.IMAGE] and row[S.PATCH_SCORES] == src[S.PATCH_SCORES]
        assert row[S.PATCH_IDX] == select_patches(np.asarray(row[S.PATCH_SCORES], np.float32), 0.25, "topk", 0,
                                                  row[S.KEY]).tolist()
    # the new output carries the signals it was selected from (phase A's columns unchanged)
    assert output_table(root / "b", "signals").equals(output_table(root / "a", "signals"))
    # the source run is untouched
    assert json.loads((root / "a" / "manifest.json").read_text())["output_sha256"] == first["output_sha256"]


def test_signals_from_is_checked_before_work(juiced):
    root, raw, _ = juiced
    base = {**raw, "output": {"path": str(root / "c")}, "signals": {"from": str(root / "a")}}
    with pytest.raises(ConfigError, match="signals.from: the signals in .* other signals parameters"):
        pipeline.prepare(parse_config({**base, "vision": {**TINY, "image_size": 32}}))
    with pytest.raises(ConfigError, match="signals.from: .* holds no djray run"):
        pipeline.prepare(parse_config({**base, "signals": {"from": str(root / "nothing")}}))
    with pytest.raises(ConfigError, match="own output.path"):
        pipeline.prepare(parse_config({**raw, "signals": {"from": str(root / "a")}}))


def test_a_source_changed_since_its_signals_fails_the_shard_and_writes_nothing_for_it(ray_cluster, tmp_path):
    corpus = tmp_path / "corpus"
    write_sample_corpus(str(corpus), 30, 2, "webdataset", seed=5)
    raw = {"input": {"path": str(corpus), "format": "webdataset"}, "output": {"path": str(tmp_path / "out")}}
    _run(raw)
    # flip one byte of one image, keeping the tar's size (so the listing fingerprint cannot see it)
    shard = corpus / "00001.tar"
    members = []
    with tarfile.open(shard) as tar:
        for m in tar:
            members.append((m, tar.extractfile(m).read()))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        flipped = False
        for m, data in members:
            if m.name.endswith(".jpg") and not flipped:
                data = data[:-3] + bytes([data[-3] ^ 0xFF]) + data[-2:]
                flipped = True
            tar.addfile(m, io.BytesIO(data))
    assert len(buf.getvalue()) == shard.stat().st_size
    shard.write_bytes(buf.getvalue())
    before = (tmp_path / "out" / "data" / "00001.parquet").read_bytes()
    with pytest.raises(pipeline.JobError, match="00001.tar: the image of row .* is not the one its signals"):
        _run({**raw, "sieve": [{"op": "random", "keep_fraction": 0.5}]})
    assert (tmp_path / "out" / "data" / "00001.parquet").read_bytes() == before
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["status"] == "incomplete" and "not the one its signals" in manifest["error"]
