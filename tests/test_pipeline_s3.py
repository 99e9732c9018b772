"""End to end against a real S3-protocol server (moto) on loopback: input from S3, output to S3."""

from __future__ import annotations

import json

import boto3
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from djray import pipeline
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
