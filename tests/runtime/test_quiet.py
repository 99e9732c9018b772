"""A clean terminal for `djray run`: Ray's output (anything written to fd 2) goes to a log file kept under the output,
djray's own progress and summary stay on the terminal, and real errors are not hidden."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from djray._compat import patch_torchvision
from djray.io.fs import Storage
from djray.runtime.progress import Progress
from djray.runtime.quiet import error_lines, ray_output_to_file

patch_torchvision()
HARMLESS = ("[2026-12-02 12:14:11,935 E 14041 14041] core_worker.cc:2465: Actor with class name: 'MapWorker(x)' and "
            "ID: 'ab' has constructor arguments in the object store and max_restarts > 0. If the arguments ...")
REAL = "[2026-12-02 12:14:12,001 E 14041 14090] raylet_client.cc:60: the raylet died"
KILLED = ("\x1b[36m(pid=gcs_server)\x1b[0m [2026-12-02 19:51:58,731 E 12745 12745] (gcs_server) "
          "gcs_actor_scheduler.cc:538: Failed to kill actor ef24be9e, return status: Invalid: KillActor RPC failed for "
          "actor ef24be9e: RpcError: RPC error: Socket closed rpc_code: 14")


def test_fd2_goes_to_the_file_and_djray_lines_to_the_terminal(capfd, tmp_path):
    with ray_output_to_file() as capture:
        os.write(2, f"{HARMLESS}\n{REAL}\n".encode())  # what C++ writes, below Python
        print("WARNING a python warning", file=sys.__stderr__, flush=True)  # sys.stderr is pytest's here
        capture.say("[select] step: 0 of 3 rows dropped")
        Progress("govern", 2, stream=None, interval=0).update(1, 10, force=True)
    out, err = capfd.readouterr()
    assert "[select] step: 0 of 3 rows dropped" in err and "[govern] 1/2 shards" in err
    assert "core_worker" not in err and "raylet" not in err and "python warning" not in err
    log = Path(capture.path).read_text()
    assert HARMLESS in log and REAL in log and "python warning" in log
    assert capture.error_lines() == [REAL]  # the harmless core_worker line is not reported
    # kept under the output only once the run claimed it (a config error leaves the output untouched)
    out_dir = tmp_path / "out"
    assert capture.keep(str(out_dir), Storage()) == capture.path and not out_dir.exists()
    (out_dir / "_djray").mkdir(parents=True)
    (out_dir / "_djray" / "job.json").write_text("{}")
    kept = capture.keep(str(out_dir), Storage())
    assert kept.startswith(str(out_dir / "_djray" / "logs" / "ray-")) and REAL in Path(kept).read_text()
    print("after", file=sys.stderr)
    assert "after" in capfd.readouterr().err  # fd 2 is back


def test_error_lines_patterns(tmp_path):
    log = tmp_path / "ray.log"
    log.write_text("\n".join([HARMLESS, KILLED, "2026-12-02 12:14:11,942\tWARNING __init__.py:28 -- Progress bars disabled.",
                              "2026-12-02 12:14:11,942\tERROR streaming_executor.py:1 -- Exception in user code",
                              "Traceback (most recent call last):", "[2026 F 1 2] check failed", "plain line"]))
    assert error_lines(str(log)) == ["2026-12-02 12:14:11,942\tERROR streaming_executor.py:1 -- Exception in user code",
                                     "Traceback (most recent call last):", "[2026 F 1 2] check failed"]
    assert error_lines(str(tmp_path / "missing.log")) == []


def _djray(*args: str, address: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ADDRESS": address}
    return subprocess.run([sys.executable, "-m", "djray", *args], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def job(tmp_path):
    from djray.sample_data import write_sample_corpus

    write_sample_corpus(str(tmp_path / "corpus"), 12, 2, "webdataset", seed=2)
    vision = {"model": "test_vit", "weights": "random", "image_size": 64, "batch_size": 8,
              "resources": {"num_cpus": 0.5}}
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps({"input": {"path": str(tmp_path / "corpus"), "format": "webdataset"},
                                "output": {"path": str(tmp_path / "out")}, "vision": vision}))
    return path, tmp_path / "out"


def test_run_prints_only_djray_lines(ray_cluster, job):
    pytest.importorskip("timm")
    config, out = job
    r = _djray("run", str(config), address=ray_cluster)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip(), "progress lines expected"
    lines = r.stderr.splitlines()
    for line in lines:
        assert line.split(" ", 1)[0] in ("[resources]", "[govern]", "[select]", "[write]"), line
    assert any(line.startswith("[resources] vision: ") for line in lines)  # what the model pool got, and why
    assert r.stdout.startswith("djray 0.1.0: complete (2/2 shards)")
    logs = list((out / "_djray" / "logs").glob("ray-*.log"))
    assert len(logs) == 1 and "core_worker.cc" in logs[0].read_text()  # Ray's output is kept, not lost


def test_verbose_shows_rays_output_and_failures_stay_visible(ray_cluster, job):
    config, out = job
    r = _djray("run", str(config), "--verbose", "--set", "vision=null", address=ray_cluster)
    assert r.returncode == 0, r.stderr
    assert "streaming_executor" in r.stderr and not (out / "_djray" / "logs").exists()
    r = _djray("run", str(config), "--set", f"output.path={out}2", address="127.0.0.1:1")
    assert r.returncode == 1
    assert "djray: job failed: cannot reach the Ray cluster at 127.0.0.1:1" in r.stderr
    assert "Ray's log of this run:" in r.stderr
    # a config error found before any work leaves the output untouched: no log is written into it
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    r = _djray("run", str(config), "--set", "decode.min_side=500", address=ray_cluster)
    assert r.returncode == 2 and "other signals parameters" in r.stderr
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
