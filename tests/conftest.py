"""Shared fixtures: one local Ray instance per test session, and a real S3-protocol server (moto) on loopback."""

from __future__ import annotations

import os

# Offline, quiet, deterministic: set before Ray or any AWS client is imported by a test.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
for _k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
    os.environ.setdefault(_k, "testing")  # moto accepts any credentials; real ones must never be used here
os.environ.setdefault("AWS_REGION", "us-east-1")

import pytest  # noqa: E402
from llm_fixtures import chat_tokenizer_factory, llm, tiny_lm_dir  # noqa: E402,F401  (shared with tests/ops/text)


@pytest.fixture(scope="session")
def ray_cluster():
    """Start one local Ray instance for the whole session; yields its GCS address for subprocess drivers."""
    import ray

    if not ray.is_initialized():
        # 4 logical CPUs on a 2-core machine: CPUs are scheduling tokens to Ray. The headroom keeps one test's actor
        # pool, while Ray is still tearing it down after a failed run, from starving the next test's read tasks.
        ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING", object_store_memory=1 << 30)
    address = ray.get_runtime_context().gcs_address
    yield address
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-protocol HTTP server (moto) on 127.0.0.1; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    yield endpoint
    server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh bucket on the loopback S3 server; yields (endpoint_url, bucket name)."""
    import uuid

    import boto3

    name = f"djray-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=name)
    return s3_server, name


@pytest.fixture(scope="session")
def _faulty_proxy(s3_server):
    from s3_faults import FaultyS3

    proxy = FaultyS3(s3_server)
    yield proxy
    proxy.close()


@pytest.fixture
def s3_faults(_faulty_proxy, s3_bucket):
    """The loopback S3 server behind a fault-injecting proxy (tests/s3_faults.py), with a fresh bucket.

    Yields a `FaultyBucket`: `.url` is the endpoint to give djray (every request through it is counted and may be
    faulted, per `.proxy.reset(FaultPlan(...))`); `.upload()` and `.client` talk to the server directly, uncounted.
    The plan starts empty (no faults) and is cleared after the test.
    """
    from s3_faults import FaultyBucket

    _faulty_proxy.reset()
    yield FaultyBucket(_faulty_proxy, *s3_bucket)
    _faulty_proxy.reset()
