"""The report of an output on S3 (moto's server on loopback), written next to it on S3 or to a local file: no vision,
no text, no sieve beyond key_dedup."""

from __future__ import annotations

import boto3

from report_page import check_page
from djray import cli, pipeline
from djray.config import parse_config
from djray.io.fs import Storage
from djray.report import write_report
from djray.sample_data import write_sample_corpus


def test_report_of_an_s3_output(ray_cluster, s3_bucket, tmp_path, monkeypatch):
    endpoint, bucket = s3_bucket
    write_sample_corpus(str(tmp_path / "in"), 12, 2, "parquet", seed=4)
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    for f in sorted((tmp_path / "in").iterdir()):
        s3.upload_file(str(f), bucket, f"in/{f.name}")
    storage = {"endpoint_url": endpoint, "region": "us-east-1"}
    manifest = pipeline.run(parse_config({"input": {"path": f"s3://{bucket}/in", "format": "parquet"},
                                          "output": {"path": f"s3://{bucket}/out"}, "storage": storage}),
                            progress=False, log=lambda m: None)
    target = write_report(f"s3://{bucket}/out", samples=3, storage=Storage(endpoint, "us-east-1"))
    assert target == f"s3://{bucket}/out/report.html"
    html = s3.get_object(Bucket=bucket, Key="out/report.html")["Body"].read().decode("utf-8")
    page = check_page(html)
    text = page.all_text
    assert f"rows in {manifest['rows_in']:,} = kept {manifest['rows_kept']:,}" in text
    assert len([a for _, a in page.images if a.startswith("sample ")]) == 3
    assert "no vision evidence" in text and "no models ran" in text
    plots = [alt for _, alt in page.images if not alt.startswith(("sample ", "dropped ", "twin "))]
    assert not [p for p in plots if p.startswith(("patch-score", "kept patches", "cluster sizes"))]
    assert [p for p in plots if p.startswith("caption words before")]
    assert "testing" not in html  # credentials never reach the page
    # the command line, endpoint from the standard AWS variable, page written locally
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    assert cli.main(["report", f"s3://{bucket}/out", "--html", str(tmp_path / "r.html"), "--samples", "1"]) == 0
    check_page((tmp_path / "r.html").read_text(encoding="utf-8"))
