"""The command line as a user runs it: exit codes, one clear message, nothing written on config errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def djray(*args: str, address: str | None = None, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if address:
        env["RAY_ADDRESS"] = address
    return subprocess.run([sys.executable, "-m", "djray", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def corpus(tmp_path):
    r = djray("sample-data", str(tmp_path / "corpus"), "--num-samples", "20", "--shards", "2", "--format",
              "webdataset", "--seed", "5")
    assert r.returncode == 0, r.stderr
    return tmp_path / "corpus"


def _config(tmp_path, corpus, extra: str = "") -> str:
    path = tmp_path / "job.yaml"
    path.write_text(f"input:\n  path: {corpus}\n  format: webdataset\noutput:\n  path: {tmp_path / 'out'}\n{extra}")
    return str(path)


def test_sample_data_layout(corpus):
    assert sorted(p.name for p in corpus.iterdir()) == ["00000.tar", "00001.tar"]


def test_sample_data_bad_arguments(tmp_path):
    r = djray("sample-data", str(tmp_path / "x"), "--num-samples", "0", "--shards", "1", "--format", "parquet")
    assert r.returncode == 2 and "at least 1" in r.stderr


def test_validate_ok_reads_nothing_and_writes_nothing(tmp_path, corpus):
    r = djray("validate", _config(tmp_path, corpus))
    assert r.returncode == 0, r.stderr
    assert "config OK: 2 shard(s)" in r.stdout
    assert not (tmp_path / "out").exists()


def test_validate_unknown_key_names_it(tmp_path, corpus):
    r = djray("validate", _config(tmp_path, corpus, "decode:\n  min_sid: 3\n"))
    assert r.returncode == 2
    assert "decode.min_sid: unknown key" in r.stderr
    assert "Traceback" not in r.stderr


def test_validate_set_override_and_missing_input(tmp_path, corpus):
    r = djray("validate", _config(tmp_path, corpus), "--set", f"input.path={tmp_path / 'nope'}")
    assert r.returncode == 2 and "input.path: input path not found" in r.stderr
    r = djray("validate", _config(tmp_path, corpus), "--set", "input.format=parquet")
    assert r.returncode == 2 and "input.path: no .parquet shards" in r.stderr


def test_run_prints_summary_and_writes_contract(ray_cluster, tmp_path, corpus):
    r = djray("run", _config(tmp_path, corpus), "--no-progress", address=ray_cluster)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert f"rows in {manifest['rows_in']:>19,}".split() == r.stdout.splitlines()[1].split()
    assert "rows/s" in r.stdout
    for reason in manifest["rejected_by_reason"]:
        assert reason in r.stdout
    assert sorted(p.name for p in (tmp_path / "out" / "data").iterdir()) == ["00000.parquet", "00001.parquet"]
    # a different config against this output is refused with one clear message, exit 2, nothing touched
    before = (tmp_path / "out" / "manifest.json").read_text()
    r = djray("run", _config(tmp_path, corpus), "--set", "decode.min_side=500", address=ray_cluster)
    assert r.returncode == 2 and "other signals parameters" in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "out" / "manifest.json").read_text() == before


def test_run_infrastructure_error_exits_1(tmp_path, corpus):
    r = djray("run", _config(tmp_path, corpus), "--no-progress", address="127.0.0.1:1")
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert "djray:" in r.stderr


def test_root_cause_digs_out_the_original_exception():
    from djray.runtime.cluster import root_cause

    class ActorDiedError(Exception):
        pass

    wrapped = ActorDiedError("The actor died because of an error raised in its creation task, ray::MapWorker()\n"
                             "  File \"x.py\", line 3, in setup\n"
                             "ValueError: vision.weights (file:/w.pt): weights do not fit model test_vit")
    assert root_cause(wrapped) == "ValueError: vision.weights (file:/w.pt): weights do not fit model test_vit"
    assert root_cause(OSError("disk full")) == "OSError: disk full"
