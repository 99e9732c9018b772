"""`djray submit`: validation before anything is sent, the runtime environment it builds, `--wait` exit codes, and
the whole path against a real two-node Ray cluster on loopback.

Three levels:

- `wait_for_job` / `submit_command` as functions (fast; `build_job` itself: tests/test_job_spec.py).
- `LocalJobAPI`: the job API's contract played by the test (submit copies the uploaded working directory and runs the
  entrypoint in it, with py_modules on PYTHONPATH, env_vars set and RAY_ADDRESS pointing at the session's Ray
  instance), so the submitted entrypoint and resolved config really run (`slow` for the one that governs data).
- `real_cluster`: `ray start` head (dashboard + job API) and a second node that advertises a GPU, then
  `djray submit --wait` as a user runs it, and Ray's state API says where the GPU stage ran. The job API needs Ray's
  dashboard (`pip install 'djray[cluster]'`); without it the same entrypoint runs as a driver on the same two-node
  cluster (placement still checked through the GCS actor table) and the submission tests are skipped.

The real cluster lives in its own `--temp-dir`, on its own loopback ports, and is stopped by process id (never
`ray stop`, which would take down every Ray instance on the machine, the session's own included). The test process
never calls `ray.init` for it: it talks HTTP only.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from ray_procs import free_ports, has_job_api, http_json, marked_pids, node_env, stop_processes

from djray import cli
from djray import submit as S

REPO = Path(__file__).resolve().parents[1]
TINY_VISION = {"model": "test_vit", "weights": "random", "image_size": 160, "ratio": 0.3, "batch_size": 4,
               "precision": "fp32"}


# ---- helpers -------------------------------------------------------------------------------------------------------


def _write_config(path: Path, corpus: Path, out: Path, vision: dict | None = None, **extra) -> Path:
    raw = {"input": {"path": str(corpus), "format": "webdataset", "rows_per_block": 4}, "output": {"path": str(out)}}
    if vision is not None:
        raw["vision"] = vision
    raw.update(extra)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _sample(out: Path, n: int = 12, shards: int = 2) -> Path:
    r = subprocess.run([sys.executable, "-m", "djray", "sample-data", str(out), "--num-samples", str(n), "--shards",
                        str(shards), "--format", "webdataset", "--seed", "3"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return out


def _args(config, *, address="http://127.0.0.1:1", overrides=(), wait=False, train=False, runtime_env=None):
    return argparse.Namespace(config=str(config), overrides=list(overrides), address=address, wait=wait, train=train,
                              runtime_env=None if runtime_env is None else str(runtime_env))


@pytest.fixture
def no_client(monkeypatch):
    """Fail the test if anything tries to reach a cluster."""

    def refuse(address):
        raise AssertionError(f"contacted the cluster at {address} although the submission is invalid")

    monkeypatch.setattr(S, "make_client", refuse)


# ---- refused before anything is sent (what is built: tests/test_job_spec.py) -------------------------------------


@pytest.mark.parametrize("env, message", [
    ({"env_vars": {"AWS_SECRET_ACCESS_KEY": "x"}}, "env_vars.AWS_SECRET_ACCESS_KEY: credentials are never sent"),
    ({"env_vars": {"aws_session_token": None}}, "credentials are never sent"),
    ({"working_dir": "s3://bucket/code.zip"}, "is remote"),
    ({"working_dir": "/does/not/exist"}, "is not a directory"),
    ({"py_modules": "djray"}, "py_modules must be a list"),
    ({"env_vars": ["A=1"]}, "env_vars must be a mapping"),
    (["pip"], "top level must be a mapping"),
    ({"pip": 3}, "--runtime-env"),
])
def test_runtime_env_problems_exit_2_before_contact(tmp_path, capsys, no_client, env, message):
    cfg = _write_config(tmp_path / "job.yaml", "s3://b/in/", "s3://b/out/")
    env_file = tmp_path / "env.json"
    env_file.write_text(json.dumps(env))
    before = set(Path(tempfile.gettempdir()).glob("djray-submit-*"))
    assert S.submit_command(_args(cfg, runtime_env=env_file)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert set(Path(tempfile.gettempdir()).glob("djray-submit-*")) == before  # no temporary directory left behind


def test_config_problems_exit_2_through_the_cli(tmp_path, capsys, no_client):
    cfg = _write_config(tmp_path / "job.yaml", "s3://b/in/", "s3://b/out/", decode={"min_sid": 3})
    assert cli.main(["submit", str(cfg), "--address", "http://127.0.0.1:1"]) == 2
    assert "decode.min_sid: unknown key" in capsys.readouterr().err
    cfg = _write_config(tmp_path / "job.yaml", "s3://b/in/", "s3://b/out/")
    assert cli.main(["submit", str(cfg), "--set", "vision.ratio=2", "--address", "http://127.0.0.1:1"]) == 2
    assert "vision.ratio" in capsys.readouterr().err
    assert cli.main(["submit", str(tmp_path / "missing.yaml"), "--address", "http://127.0.0.1:1"]) == 2
    assert "cannot read config" in capsys.readouterr().err


def test_missing_job_client_exits_2(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "aiohttp" else real(name, *a))
    cfg = _write_config(tmp_path / "job.yaml", "s3://b/in/", "s3://b/out/")
    assert S.submit_command(_args(cfg)) == 2
    assert "pip install 'djray[cluster]'" in capsys.readouterr().err


def test_unreachable_cluster_exits_1(tmp_path, capsys, monkeypatch):
    def unreachable(address):
        raise ConnectionError(f"Failed to connect to Ray at address: {address}.")

    monkeypatch.setattr(S, "make_client", unreachable)
    cfg = _write_config(tmp_path / "job.yaml", "s3://b/in/", "s3://b/out/")
    assert S.submit_command(_args(cfg, address="http://127.0.0.1:1")) == 1
    err = capsys.readouterr().err
    assert "cannot reach the Ray job API at http://127.0.0.1:1" in err and "Traceback" not in err


def test_unreachable_cluster_exits_1_with_rays_client(tmp_path):
    """The real job client against a closed loopback port (needs ray[default])."""
    if has_job_api():
        pytest.skip(has_job_api())
    (port,) = free_ports(1)
    cfg = _write_config(tmp_path / "job.yaml", "s3://b/in/", "s3://b/out/")
    r = subprocess.run([sys.executable, "-m", "djray", "submit", str(cfg), "--address", f"http://127.0.0.1:{port}"],
                       env=node_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert "cannot reach the Ray job API" in r.stderr and "Traceback" not in r.stderr


def test_explicit_address_beats_ray_address(monkeypatch):
    seen = {}

    class Client:
        def __init__(self, address, headers=None):
            seen["address"], seen["env"], seen["headers"] = address, os.environ.get("RAY_ADDRESS"), headers

    import ray.job_submission

    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", Client)
    monkeypatch.setattr(S.importlib.util, "find_spec", lambda name, *a: object())
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "t0ken")  # the client presents the token (djray.runtime.auth)
    S.make_client("http://head:8265")
    assert seen == {"address": "http://head:8265", "env": None, "headers": {"Authorization": "Bearer t0ken"}}
    assert os.environ["RAY_ADDRESS"] == "127.0.0.1:6379"  # restored


# ---- --wait ---------------------------------------------------------------------------------------------------------


class ScriptedClient:
    """Statuses and growing logs, one step per poll."""

    def __init__(self, steps, info):
        self.steps, self.info, self.i = steps, info, -1

    def get_job_status(self, job_id):
        self.i = min(self.i + 1, len(self.steps) - 1)
        return self.steps[self.i][0]

    def get_job_logs(self, job_id):
        return self.steps[self.i][1]

    def get_job_info(self, job_id):
        return self.info


def test_wait_streams_each_line_once_and_maps_statuses():
    steps = [("PENDING", ""), ("RUNNING", "a\n"), ("RUNNING", "a\n"), ("RUNNING", "a\nb\n"), ("SUCCEEDED", "a\nb\nc\n")]
    out, err, sleeps = io.StringIO(), io.StringIO(), []
    rc = S.wait_for_job(ScriptedClient(steps, SimpleNamespace(status="SUCCEEDED", message="ok")), "j1", out=out,
                        err=err, sleep=sleeps.append)
    assert rc == 0 and out.getvalue() == "a\nb\nc\n" and "j1 SUCCEEDED" in err.getvalue()
    assert len(sleeps) == 4 and all(1.0 <= s <= 5.0 for s in sleeps)

    message = ("Job entrypoint command failed with exit code 2, last available logs (truncated to 20,000 chars):\n"
               "djray: input.path: input path not found: /x\n")
    failed = SimpleNamespace(status="FAILED", message=message, driver_exit_code=2)
    err = io.StringIO()
    rc = S.wait_for_job(ScriptedClient([("FAILED", "djray: input.path: input path not found: /x\n")], failed), "j2",
                        out=io.StringIO(), err=err, sleep=lambda s: None)
    assert rc == 1
    assert err.getvalue().strip() == ("djray: job j2 FAILED (exit code 2): Job entrypoint command failed with exit "
                                      "code 2\n  djray: input.path: input path not found: /x")

    # a dropped connection is retried; one that stays down ends the wait with the error
    class Flaky(ScriptedClient):
        calls = 0

        def get_job_status(self, job_id):
            Flaky.calls += 1
            if Flaky.calls <= 2:
                raise ConnectionError("port-forward restarting")
            return super().get_job_status(job_id)

    ok = SimpleNamespace(status="SUCCEEDED", message="ok")
    assert S.wait_for_job(Flaky([("SUCCEEDED", "x\n")], ok), "j4", out=io.StringIO(), err=io.StringIO(),
                          sleep=lambda s: None) == 0

    class Down(ScriptedClient):
        def get_job_status(self, job_id):
            raise ConnectionError("gone")

    with pytest.raises(ConnectionError):
        S.wait_for_job(Down([], ok), "j5", out=io.StringIO(), err=io.StringIO(), sleep=lambda s: None)

    stopped = SimpleNamespace(status="STOPPED", message="Job was intentionally stopped.", driver_exit_code=None)
    err = io.StringIO()
    assert S.wait_for_job(ScriptedClient([("STOPPED", "")], stopped), "j3", out=io.StringIO(), err=err,
                          sleep=lambda s: None) == 1
    assert "j3 STOPPED: Job was intentionally stopped." in err.getvalue()


# ---- the job API's contract, played locally ---------------------------------------------------------------------------


class LocalJobAPI:
    """Plays the cluster's job API: what `submit_job` uploads is copied, and the entrypoint runs in that copy the way
    Ray's job supervisor runs it (a shell command; py_modules importable; env_vars set; RAY_ADDRESS = the cluster)."""

    def __init__(self, root: Path, ray_address: str | None):
        self.root, self.ray_address, self.jobs, self.submissions = root, ray_address, {}, []

    def __call__(self, address):  # stands in for make_client
        self.address = address
        return self

    def get_address(self):
        return self.address

    def submit_job(self, *, entrypoint, runtime_env, metadata):
        job_id = f"raysubmit_local{len(self.jobs)}"
        self.submissions.append({"entrypoint": entrypoint, "runtime_env": runtime_env, "metadata": metadata})
        wd = self.root / job_id
        shutil.copytree(runtime_env["working_dir"], wd)  # the upload
        env = node_env()
        env.update(runtime_env.get("env_vars", {}))
        if self.ray_address:
            env["RAY_ADDRESS"] = self.ray_address
        paths = [str(Path(p).parent) for p in runtime_env.get("py_modules", [])]
        env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
        log = wd.parent / f"{job_id}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(entrypoint, shell=True, cwd=wd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        self.jobs[job_id] = (proc, log, wd)
        return job_id

    def get_job_status(self, job_id):
        proc = self.jobs[job_id][0]
        code = proc.poll()
        return "RUNNING" if code is None else ("SUCCEEDED" if code == 0 else "FAILED")

    def get_job_logs(self, job_id):
        return self.jobs[job_id][1].read_text(errors="replace")

    def get_job_info(self, job_id):
        proc, log, _ = self.jobs[job_id]
        code = proc.wait(timeout=300)
        if code == 0:
            return SimpleNamespace(status="SUCCEEDED", message="Job finished successfully.", driver_exit_code=0)
        tail = log.read_text(errors="replace")[-20000:]
        return SimpleNamespace(status="FAILED", driver_exit_code=code,
                               message=f"Job entrypoint command failed with exit code {code}, last available logs "
                                       f"(truncated to 20,000 chars):\n{tail}")


@pytest.fixture
def local_api(tmp_path, monkeypatch, request):
    ray_address = request.getfixturevalue("ray_cluster") if "ray_cluster" in request.fixturenames else None
    api = LocalJobAPI(tmp_path / "cluster", ray_address)
    (tmp_path / "cluster").mkdir()
    monkeypatch.setattr(S, "make_client", api)
    yield api
    for proc, _, _ in api.jobs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_local_api_failed_job_exits_1_with_its_error(tmp_path, capsys, local_api):
    cfg = _write_config(tmp_path / "job.yaml", tmp_path / "no-corpus-on-the-cluster", tmp_path / "out")
    rc = cli.main(["submit", str(cfg), "--address", "http://head:8265", "--wait"])
    cap = capsys.readouterr()
    assert rc == 1, cap.err
    assert cap.out.splitlines()[0] == "raysubmit_local0"
    assert "djray: job raysubmit_local0 FAILED (exit code 2)" in cap.err
    assert "djray: input.path: input path not found" in cap.err
    assert not Path(local_api.submissions[0]["runtime_env"]["working_dir"]).exists()  # deleted after the upload


def test_local_api_train_job_runs_the_trainer_entrypoint(tmp_path, capsys, local_api):
    """The training job runs `djray train` on the cluster: a bad training config fails the job with its message."""
    cfg = tmp_path / "train.yaml"
    cfg.write_text("data: s3://bucket/governed/\n")
    rc = cli.main(["submit", "--train", str(cfg), "--address", "http://head:8265", "--wait"])
    cap = capsys.readouterr()
    assert rc == 1
    assert "djray: invalid config" in cap.out  # the job's log
    assert "FAILED (exit code 2)" in cap.err


def test_local_api_without_wait_prints_the_id_and_how_to_follow(tmp_path, capsys, local_api):
    cfg = _write_config(tmp_path / "job.yaml", "s3://b/in/", "s3://b/out/")
    assert cli.main(["submit", str(cfg), "--address", "http://head:8265"]) == 0
    cap = capsys.readouterr()
    assert cap.out == "raysubmit_local0\n"
    assert "ray job logs --address http://head:8265 --follow raysubmit_local0" in cap.err


@pytest.mark.slow
def test_local_api_governs_with_the_submitted_config(ray_cluster, tmp_path, capsys, local_api):
    corpus = _sample(tmp_path / "corpus")
    cfg = _write_config(tmp_path / "job.yaml", corpus, tmp_path / "out", dict(TINY_VISION))
    rc = cli.main(["submit", str(cfg), "--address", "http://head:8265", "--wait", "--set", "vision.ratio=0.5"])
    cap = capsys.readouterr()
    assert rc == 0, cap.out[-3000:] + cap.err[-3000:]
    assert "complete (2/2 shards)" in cap.out
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["accounting_ok"] and manifest["rows_in"] == 12
    assert manifest["config"]["vision"]["ratio"] == 0.5


# ---- a real cluster: head with the job API + a node that advertises a GPU ------------------------------------------


def _driver(cluster, code: str, timeout: float = 120) -> object:
    """Run `code` in a short-lived driver attached to the test cluster; it prints one JSON value."""
    prog = f"import json, ray\nray.init(address={cluster.gcs!r}, logging_level='ERROR')\n{code}"
    r = subprocess.run([sys.executable, "-c", prog], env=cluster.client_env, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def real_cluster():
    """A head (1 CPU, no GPU; with the job API when Ray's dashboard is installed) and a second node advertising 1 CPU,
    1 GPU and the custom resource `gpu_node`, on loopback, in their own temp dir."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the test cluster is stopped through /proc")
    no_job_api = has_job_api()
    ray_bin = Path(sys.executable).with_name("ray")
    ray_cmd = [str(ray_bin)] if ray_bin.exists() else [shutil.which("ray") or "ray"]
    temp_dir = tempfile.mkdtemp(prefix="djrt", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    marker = f"djray-test-cluster-{uuid.uuid4().hex}"
    env = node_env()
    env.update(DJRAY_TEST_CLUSTER=marker, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    (gcs, dash, client, *head_ports) = free_ports(9)
    worker_ports = free_ports(6)

    def node_ports(p):
        return ["--node-manager-port", str(p[0]), "--object-manager-port", str(p[1]), "--dashboard-agent-listen-port",
                str(p[2]), "--dashboard-agent-grpc-port", str(p[3]), "--runtime-env-agent-port", str(p[4]),
                "--metrics-export-port", str(p[5])]

    # 127.0.0.2: Ray swaps 127.0.0.1 for the machine's outward address; any other loopback address it keeps
    common = ["--node-ip-address", "127.0.0.2", "--temp-dir", temp_dir, "--disable-usage-stats",
              "--object-store-memory", str(256 << 20)]
    if no_job_api:
        dashboard = ["--include-dashboard=false"]
    else:
        dashboard = ["--include-dashboard=true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
                     "--ray-client-server-port", str(client)]
    head = [*ray_cmd, "start", "--head", "--port", str(gcs), *dashboard, "--num-cpus", "1", "--num-gpus", "0",
            *common, *node_ports(head_ports)]
    gpu_node = [*ray_cmd, "start", "--address", f"127.0.0.2:{gcs}", "--num-cpus", "1", "--num-gpus", "1",
                "--resources", json.dumps({"gpu_node": 1}), *common, *node_ports(worker_ports)]
    client_env = {k: v for k, v in env.items() if k != "DJRAY_TEST_CLUSTER"}  # drivers and the CLI are not nodes
    cluster = SimpleNamespace(url=None if no_job_api else f"http://127.0.0.1:{dash}", gcs=f"127.0.0.2:{gcs}",
                              env=env, client_env=client_env, no_job_api=no_job_api, gpu_node_id=None)
    try:
        for cmd in (head, gpu_node):
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
            assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        deadline = time.monotonic() + 120
        while True:
            nodes = _driver(cluster, "print(json.dumps([[n['NodeID'], n['Resources']] for n in ray.nodes() "
                                     "if n['Alive']]))")
            gpu_nodes = [node_id for node_id, res in nodes if res.get("gpu_node") and res.get("GPU")]
            if len(nodes) == 2 and len(gpu_nodes) == 1:
                break
            assert time.monotonic() < deadline, f"expected 2 nodes, one with gpu_node: {nodes}"
            time.sleep(1)
        cluster.gpu_node_id = gpu_nodes[0]
        if cluster.url:  # ready = a trivial job runs to completion (job API, head agent, job supervisor all up)
            probe = None
            while True:
                try:
                    if probe is None:
                        probe = http_json(f"{cluster.url}/api/jobs/", {"entrypoint": "true"})["submission_id"]
                    status = http_json(f"{cluster.url}/api/jobs/{probe}")["status"]
                    if status == "SUCCEEDED":
                        break
                    assert status in ("PENDING", "RUNNING"), f"readiness probe job ended {status}"
                except (urllib.error.URLError, ConnectionError, OSError, KeyError, json.JSONDecodeError):
                    pass
                assert time.monotonic() < deadline, "the test cluster's job API did not come up"
                time.sleep(1)
        yield cluster
    finally:
        left = stop_processes(lambda: marked_pids(marker, temp_dir))
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"test cluster processes survived SIGKILL: {sorted(left)}"


def _submit(cluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "djray", "submit", *args, "--address", cluster.url, "--wait"],
                          env=cluster.client_env, capture_output=True, text=True, timeout=400)


@pytest.mark.slow
def test_real_cluster_gpu_stage_lands_on_the_gpu_node(real_cluster, tmp_path):
    """`djray submit --wait` end to end; the scorer pool (the only GPU request) runs on the GPU node, nothing else asks
    for a GPU. Local paths work here because both nodes share this machine's filesystem (docs/cluster.md: use S3).

    Without Ray's job API installed, the same entrypoint runs as a driver attached to the same cluster (what the job
    supervisor would run), so placement is still checked; the submission itself is then skipped.
    """
    corpus = _sample(tmp_path / "corpus")
    vision = {**TINY_VISION, "resources": {"num_gpus": 1, "pool_size": 1}}
    cfg = _write_config(tmp_path / "job.yaml", corpus, tmp_path / "out", vision)
    if real_cluster.url:
        r = _submit(real_cluster, str(cfg))
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
        job_id = r.stdout.splitlines()[0]
        assert job_id.startswith("raysubmit_"), r.stdout[:500]
    else:
        r = subprocess.run([sys.executable, str(REPO / "jobs" / "govern.py"), str(cfg)], cwd=tmp_path,
                           env={**real_cluster.client_env, "RAY_ADDRESS": real_cluster.gcs}, capture_output=True,
                           text=True, timeout=400)
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "complete (2/2 shards)" in r.stdout  # the job's own summary (streamed from its logs with --wait)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["accounting_ok"]
    assert manifest["rows_in"] == 12 and manifest["shards_done"] == 2
    assert manifest["models"]["vision"]["device"] == "cpu"  # the GPU is advertised, not real: the op falls back

    if real_cluster.url:
        # Ray's state API records every actor's node and resource request. The scorer pool's actors are the only
        # ones of this job that asked for a GPU; each ran on the node that advertises one.
        from ray.util.state import list_actors

        driver_job = S.make_client(real_cluster.url).get_job_info(job_id).job_id  # the driver's job id (hex)
        actors = list_actors(address=real_cluster.url, filters=[("job_id", "=", driver_job)], detail=True,
                             limit=10000)
        gpu_actors = [a for a in actors if (a.required_resources or {}).get("GPU", 0) > 0]
        assert gpu_actors, [(a.class_name, a.required_resources) for a in actors]
        assert {a.node_id for a in gpu_actors} == {real_cluster.gpu_node_id}
        assert all("MapWorker" in (a.repr_name or a.class_name) for a in gpu_actors)
    else:
        # Without the dashboard: the GCS actor table (what the state API reads) through a driver.
        actors = _driver(real_cluster, "print(json.dumps([[a.get('ActorClassName') or a.get('ClassName', ''), "
                                       "a['Address']['NodeID']] for a in ray._private.state.state.actor_table(None)"
                                       ".values()]))")
        scorers = [node for name, node in actors if "_OpActor" in name]
        assert scorers and set(scorers) == {real_cluster.gpu_node_id}, actors


@pytest.mark.slow
def test_real_cluster_failed_job_exits_nonzero_with_its_error(real_cluster, tmp_path):
    if real_cluster.no_job_api:
        pytest.skip(real_cluster.no_job_api)
    cfg = _write_config(tmp_path / "job.yaml", tmp_path / "not-on-the-cluster", tmp_path / "out")
    r = _submit(real_cluster, str(cfg))
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    assert "FAILED (exit code 2)" in r.stderr
    assert "input.path: input path not found" in r.stderr
    assert "Traceback" not in r.stderr
