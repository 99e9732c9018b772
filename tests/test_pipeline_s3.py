"""End to end against a real S3-protocol server (moto) on loopback: input from S3, output to S3."""

from __future__ import annotations

import json
import math
import re

import boto3
import yaml
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from djray import pipeline
from djray import schema as S
from djray.config import ConfigError, parse_config
from djray.sample_data import write_sample_corpus


def _upload(tmp_path, endpoint, bucket, fmt, n=24, shards=3):
    local = tmp_path / fmt
    write_sample_corpus(str(local), n, shards, fmt, seed=3)
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    for f in sorted(local.iterdir()):
        s3.upload_file(str(f), bucket, f"in/{fmt}/{f.name}")
    return local


def _s3fs(endpoint):
    return pafs.S3FileSystem(endpoint_override=endpoint.split("://")[1], scheme="http", region="us-east-1")


@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_s3_in_s3_out(ray_cluster, s3_bucket, tmp_path, fmt):
    endpoint, bucket = s3_bucket
    _upload(tmp_path, endpoint, bucket, fmt)
    cfg = parse_config({
        "input": {"path": f"s3://{bucket}/in/{fmt}", "format": fmt},
        "output": {"path": f"s3://{bucket}/out/{fmt}"},
        "storage": {"endpoint_url": endpoint, "region": "us-east-1"},
    })
    manifest = pipeline.run(cfg, progress=False, log=lambda m: None)
    assert manifest["status"] == "complete" and manifest["accounting_ok"]
    assert manifest["rows_in"] == 24 and manifest["shards_done"] == 3

    fs = _s3fs(endpoint)
    names = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(f"{bucket}/out/{fmt}", recursive=True))
                   if i.type == pafs.FileType.File and "/_djray/" not in i.path)
    assert names == sorted([f"{bucket}/out/{fmt}/manifest.json"]
                           + [f"{bucket}/out/{fmt}/{d}/{s:05d}.parquet" for d in ("data", "rejects", "signals")
                              for s in range(3)])
    kept = sum(pq.read_table(f"{bucket}/out/{fmt}/data/{s:05d}.parquet", filesystem=fs).num_rows for s in range(3))
    rejected = sum(pq.read_table(f"{bucket}/out/{fmt}/rejects/{s:05d}.parquet", filesystem=fs).num_rows
                   for s in range(3))
    assert (kept, rejected) == (manifest["rows_kept"], manifest["rows_rejected"])
    with fs.open_input_stream(f"{bucket}/out/{fmt}/manifest.json") as f:
        stored = json.loads(f.read())
    assert stored["config_sha256"] == manifest["config_sha256"]
    # credentials never reach the manifest
    assert "testing" not in json.dumps(stored)
    # no staging left behind once complete
    assert not fs.get_file_info(pafs.FileSelector(f"{bucket}/out/{fmt}/_djray/staging", allow_not_found=True))


def test_s3_env_endpoint_and_missing_prefix(ray_cluster, s3_bucket, monkeypatch):
    endpoint, bucket = s3_bucket
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # the standard AWS variable works without storage.*
    cfg = parse_config({"input": {"path": f"s3://{bucket}/nothing-here", "format": "webdataset"},
                        "output": {"path": f"s3://{bucket}/out"}})
    with pytest.raises(ConfigError, match="input.path"):
        pipeline.prepare(cfg)


# ---- through a faulty store: throttling, resets, bodies cut short (tests/s3_faults.py) -----------------------------

MiB = 1 << 20
READ_AHEAD = 8 * MiB  # djray.io.sequential.READ_AHEAD_BYTES: the request-count target is stated in these units


def _rows(fs: pafs.FileSystem, root: str) -> tuple[list[tuple], list[tuple]]:
    """(data rows, reject rows) of an output, each sorted by (src_shard, src_index): every column a user reads."""
    data, rejects = [], []
    for kind, out, cols in (("data", data, [S.SRC_SHARD, S.SRC_INDEX, S.KEY, S.CAPTION, S.CAPTION_RAW, S.IMAGE,
                                            S.IMG_WIDTH, S.IMG_HEIGHT, S.SRC_JSON]),
                            ("rejects", rejects, [S.SRC_SHARD, S.SRC_INDEX, S.KEY, S.STAGE, S.REASON, S.IMAGE])):
        for info in fs.get_file_info(pafs.FileSelector(f"{root}/{kind}")):
            t = pq.read_table(info.path, filesystem=fs, columns=cols)
            out += [tuple(r[c] for c in cols) for r in t.to_pylist()]
    return sorted(data, key=lambda r: r[:2]), sorted(rejects, key=lambda r: r[:2])


def _local_run(tmp_path, corpus, fmt):
    out = tmp_path / f"local-{fmt}"
    cfg = parse_config({"input": {"path": str(corpus), "format": fmt}, "output": {"path": str(out)}})
    manifest = pipeline.run(cfg, progress=False, log=lambda m: None)
    return manifest, _rows(pafs.LocalFileSystem(), str(out))


def _s3_config(s3_faults, fmt, **storage):
    return {"input": {"path": f"s3://{s3_faults.bucket}/in/{fmt}", "format": fmt},
            "output": {"path": f"s3://{s3_faults.bucket}/out/{fmt}"},
            "storage": {"endpoint_url": s3_faults.url, "region": "us-east-1", **storage}}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_a_faulty_store_changes_nothing(ray_cluster, s3_faults, tmp_path, fmt):
    """Input and output on S3 behind a store that answers every 5th request `503 SlowDown`, drops every 13th
    connection and cuts every 3rd large response body in the middle: the job completes in one run, with the same rows,
    captions and image bytes as a run from local disk and no reject reason that run does not have; each read of a
    shard takes at most ceil(size / 8 MiB) + 2 successful GETs — a shard is read twice: by phase A, and by phase C
    for its image bytes (the signals store holds none) —; each output file is one multipart upload."""
    from s3_faults import FaultPlan

    corpus = tmp_path / "corpus"
    write_sample_corpus(str(corpus), 48, 3, fmt, seed=5)
    local_manifest, (local_data, local_rejects) = _local_run(tmp_path, corpus, fmt)
    sizes = s3_faults.upload(corpus, f"in/{fmt}")

    s3_faults.proxy.reset(FaultPlan(slowdown_every=5, drop_every=13, cut_every=3, cut_min_bytes=64 << 10))
    manifest = pipeline.run(parse_config(_s3_config(s3_faults, fmt)), progress=False, log=lambda m: None)
    faults = s3_faults.proxy.faults()
    assert faults["slowdown"] and faults["drop"] and faults["cut"], faults  # the store really misbehaved
    assert manifest["status"] == "complete" and manifest["accounting_ok"]
    for key, size in sizes.items():
        target = 2 * (math.ceil(size / READ_AHEAD) + 2)  # two sequential reads: phase A and phase C
        gets = s3_faults.proxy.requests("GET", key)
        answered = [r for r in gets if r.fault is None]
        assert len(answered) <= target, (key, size, [(r.range, r.fault) for r in gets])
        assert len(gets) <= target + sum(r.fault is not None for r in gets)
    for kind in ("data", "rejects", "signals"):
        for s in range(3):
            key = f"{s3_faults.bucket}/out/{fmt}/{kind}/{s:05d}.parquet"
            created = [r for r in s3_faults.proxy.requests("POST", key, ok=True) if r.query == "uploads"]
            assert len(created) == 1, (key, created)

    s3_faults.proxy.reset()  # the checks below read the output with a plain pyarrow reader
    data, rejects = _rows(s3_faults.fs(), f"{s3_faults.bucket}/out/{fmt}")
    assert data == local_data and rejects == local_rejects
    assert manifest["rejected_by_reason"] == local_manifest["rejected_by_reason"]
    assert (manifest["rows_in"], manifest["rows_kept"]) == (local_manifest["rows_in"], local_manifest["rows_kept"])


def _big_image_shard(path) -> bytes:
    """A tar whose third sample's image is a ~10 MB JPEG: the shard spans two 8 MiB windows and the image the boundary."""
    from corpus import enc, noise, sample_members, write_tar

    big = enc(noise(3200, 2200, seed=7), "JPEG", quality=97)
    assert big.__len__() > 6 * MiB
    members = []
    for i in range(5):
        image = big if i == 2 else enc(noise(200, 150, seed=i), "JPEG")
        members += sample_members(f"s{i:02d}", f"caption {i}", image=image)
    write_tar(path, members)
    return big


def test_a_connection_dropped_mid_image_keeps_the_row(ray_cluster, s3_faults, tmp_path):
    """The response carrying the second half of a large image is cut in the middle, with the AWS SDK's own retries
    off (storage.retries=1): the reader asks again from the first byte it has not received, the row is kept and its
    image bytes are identical."""
    from s3_faults import FaultPlan, Rule

    big = _big_image_shard(tmp_path / "in" / "00000.tar")
    (key, size), = s3_faults.upload(tmp_path / "in", "in/webdataset").items()
    assert size > READ_AHEAD
    s3_faults.proxy.reset(FaultPlan(rules=[Rule("cut", key=key, nth=2, cut_at=MiB)]))
    manifest = pipeline.run(parse_config(_s3_config(s3_faults, "webdataset", retries=1)), progress=False,
                            log=lambda m: None)
    assert manifest["status"] == "complete" and manifest["rows_kept"] == 5 and manifest["rows_rejected"] == 0
    data, _ = _rows(s3_faults.fs(), f"{s3_faults.bucket}/out/webdataset")
    assert [r[2] for r in data] == [f"s{i:02d}" for i in range(5)]
    assert data[2][5] == big
    gets = s3_faults.proxy.requests("GET", key)
    assert [(r.range, r.fault) for r in gets] == [(f"bytes=0-{READ_AHEAD - 1}", None),  # phase A
                                                 (f"bytes={READ_AHEAD}-{size - 1}", "cut"),
                                                 (f"bytes={READ_AHEAD}-{size - 1}", None),
                                                 (f"bytes=0-{READ_AHEAD - 1}", None),  # phase C, for the image bytes
                                                 (f"bytes={READ_AHEAD}-{size - 1}", None)]


def test_retries_exhausted_fail_the_task_then_the_job_in_one_line_then_resume(ray_cluster, s3_faults, tmp_path,
                                                                                 capsys):
    """Every GET of one shard is throttled. Its read gives up after 3 attempts (1 request each: storage.retries=1),
    Ray reruns the task once (ray.task_retries=1), then the job fails: exit 1, one line naming the object and the
    cause, no marker, data file or complete manifest for that shard. Re-running with the store healthy resumes
    (completed shards are not read again) and ends with the rows of a run from local disk."""
    from s3_faults import FaultPlan, Rule

    from djray import cli
    from djray.io.errors import OBJECT_ATTEMPTS

    corpus = tmp_path / "corpus"
    write_sample_corpus(str(corpus), 36, 3, "webdataset", seed=9)
    _, (local_data, local_rejects) = _local_run(tmp_path, corpus, "webdataset")
    sizes = s3_faults.upload(corpus, "in/webdataset")
    bad = f"{s3_faults.bucket}/in/webdataset/00001.tar"
    config = tmp_path / "job.yaml"
    raw = _s3_config(s3_faults, "webdataset", retries=1)
    raw["ray"] = {"task_retries": 1}
    config.write_text(yaml.safe_dump(raw))

    s3_faults.proxy.reset(FaultPlan(rules=[Rule("slowdown", key=bad, count=10**6)]))
    capsys.readouterr()
    assert cli.main(["run", str(config), "--no-progress"]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("djray:")]
    assert len(lines) == 1, lines
    assert f"s3://{bad}" in lines[0] and re.search("SLOW_DOWN|SERVICE_UNAVAILABLE", lines[0]), lines[0]
    assert len(s3_faults.proxy.requests("GET", bad)) == 2 * OBJECT_ATTEMPTS  # two task attempts, then the job failed

    fs, out = s3_faults.fs(), f"{s3_faults.bucket}/out/webdataset"
    with fs.open_input_stream(f"{out}/manifest.json") as f:
        failed = json.loads(f.read())
    assert failed["status"] == "incomplete" and f"s3://{bad}" in failed["error"]
    assert not [i for i in fs.get_file_info(pafs.FileSelector(out, recursive=True))
                if "00001" in i.path and any(d in i.path for d in ("/sealed/", "/done/", "/data/", "/signals/"))]
    sealed = {i.path.rsplit("/", 1)[1].removesuffix(".json")
              for i in fs.get_file_info(pafs.FileSelector(f"{out}/_djray/sealed", recursive=True,
                                                          allow_not_found=True)) if i.path.endswith(".json")}
    assert "00001.tar" not in sealed  # which of the others completed before the job stopped depends on timing

    s3_faults.proxy.reset()
    assert cli.main(["run", str(config), "--no-progress"]) == 0
    assert _rows(fs, out) == (local_data, local_rejects)
    for key, size in sizes.items():
        assert size < READ_AHEAD  # one GET per read: phase A again only for the unsealed shard, phase C for all
        reads = len(s3_faults.proxy.requests("GET", key))
        assert reads == (1 if key.rsplit("/", 1)[1] in sealed else 2), (key, reads)
