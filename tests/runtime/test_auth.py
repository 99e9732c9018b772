"""Token authentication: where the token is found, the one-line message when a cluster refuses, and a real cluster
started by `ray start --head` with Ray's defaults (a token on the head turns token authentication on).

The real cluster runs with its own HOME (its token in HOME/.ray/auth_token, as `ray get-auth-token --generate` writes
it): this machine's ~/.ray is never read or written. tests/conftest.py sets RAY_AUTH_MODE=disabled for the session's
own Ray instance, so every process here gets an environment built explicitly, without it unless a test sets it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from ray_procs import free_ports, has_job_api, marked_pids, node_env, stop_processes

from djray.runtime import auth

# ---- where the token comes from ------------------------------------------------------------------------------------


def test_token_sources_in_rays_order(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("from-home\n")
    (tmp_path / "tok").write_text("  from-path  \n")
    monkeypatch.setenv("HOME", str(home))
    assert auth.find_token({}) == auth.Token("from-home", "~/.ray/auth_token")
    assert auth.find_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "tok")}) == auth.Token(
        "from-path", f"RAY_AUTH_TOKEN_PATH ({tmp_path / 'tok'})")
    both = {"RAY_AUTH_TOKEN": "from-env", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "tok")}
    assert auth.find_token(both) == auth.Token("from-env", "RAY_AUTH_TOKEN")
    assert auth.find_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")}) is None  # named but absent: no token
    assert "from-env" not in repr(auth.find_token(both))  # never printed
    monkeypatch.setenv("HOME", str(tmp_path / "empty"))
    assert auth.find_token({}) is None


def test_headers_and_the_explicit_mode(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert auth.http_headers({"RAY_AUTH_TOKEN": "t"}) == {"Authorization": "Bearer t"}
    assert auth.http_headers({"RAY_AUTH_TOKEN": "t", "RAY_AUTH_MODE": "disabled"}) is None
    assert auth.http_headers({}) is None


def test_failure_lines_say_what_is_missing_and_how_to_provide_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    where = "the Ray cluster at http://head:8265 requires token authentication"
    missing = auth.failure_line("http://head:8265", {})
    assert missing.startswith(f"{where} and no token was found here: set RAY_AUTH_TOKEN")
    wrong = auth.failure_line("http://head:8265", {"RAY_AUTH_TOKEN": "nope"})
    assert wrong.startswith(f"{where} and refused the token from RAY_AUTH_TOKEN") and "nope" not in wrong
    off = auth.failure_line("http://head:8265", {"RAY_AUTH_TOKEN": "t", "RAY_AUTH_MODE": "disabled"})
    assert "RAY_AUTH_MODE=disabled is set here" in off
    unreadable = auth.failure_line("http://head:8265", {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "nope")})
    assert f"RAY_AUTH_TOKEN_PATH names {tmp_path / 'nope'}, which holds no readable token" in unreadable
    for line in (missing, wrong, off, unreadable):
        assert "\n" not in line and "~/.ray/auth_token" in line and "RAY_AUTH_TOKEN_PATH" in line


def test_auth_errors_are_recognised_when_wrapped():
    from ray.exceptions import AuthenticationError

    try:
        try:
            raise AuthenticationError("RPC error: InvalidAuthToken: Authentication token is missing or incorrect")
        except AuthenticationError as cause:
            raise ConnectionError("Failed to connect to Ray cluster at 127.0.0.2:6379") from cause
    except ConnectionError as e:
        assert auth.is_auth_error(e)
    assert not auth.is_auth_error(ConnectionError("Failed to connect to Ray cluster at 127.0.0.2:6379"))


# ---- a real cluster with token authentication ------------------------------------------------------------------------


def _env(home: Path, **extra: str) -> dict[str, str]:
    """A client's or node's environment: this interpreter's, no RAY_AUTH_* unless given, its own HOME."""
    env = {k: v for k, v in node_env().items() if not k.startswith("RAY_AUTH_")}
    env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


def _ready(url: str, token: str, deadline: float) -> None:
    """The job API answers an authenticated request (and refuses an anonymous one: token auth is on)."""
    while True:
        try:
            req = urllib.request.Request(f"{url}/api/version", headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(req, timeout=5):
                pass
            break
        except (urllib.error.URLError, ConnectionError, OSError):
            assert time.monotonic() < deadline, "the token cluster's job API did not come up"
            time.sleep(1)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{url}/api/version", timeout=5)
    assert refused.value.code == 401


@pytest.fixture(scope="module")
def token_cluster(tmp_path_factory):
    """`ray start --head` with Ray's defaults, its token generated in its own HOME; stopped by process id."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the test cluster is stopped through /proc")
    if has_job_api():
        pytest.skip(has_job_api())
    ray_cmd = str(Path(sys.executable).with_name("ray"))
    head_home = tmp_path_factory.mktemp("head-home")
    temp_dir = tempfile.mkdtemp(prefix="djra", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    marker = f"djray-test-cluster-{uuid.uuid4().hex}"
    env = _env(head_home, DJRAY_TEST_CLUSTER=marker)
    gcs, dash, client, *ports = free_ports(9)
    try:
        r = subprocess.run([ray_cmd, "get-auth-token", "--generate"], env=env, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        token_path = head_home / ".ray" / "auth_token"
        token = token_path.read_text().strip()
        head = [ray_cmd, "start", "--head", "--port", str(gcs), "--include-dashboard=true", "--dashboard-host",
                "127.0.0.1", "--dashboard-port", str(dash), "--ray-client-server-port", str(client), "--num-cpus", "2",
                "--node-ip-address", "127.0.0.2", "--temp-dir", temp_dir, "--disable-usage-stats",
                "--object-store-memory", str(256 << 20), "--node-manager-port", str(ports[0]),
                "--object-manager-port", str(ports[1]), "--dashboard-agent-listen-port", str(ports[2]),
                "--dashboard-agent-grpc-port", str(ports[3]), "--runtime-env-agent-port", str(ports[4]),
                "--metrics-export-port", str(ports[5])]
        r = subprocess.run(head, env=env, capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "Token authentication is enabled" in r.stderr  # Ray's defaults: a token on the head turns it on
        url = f"http://127.0.0.1:{dash}"
        _ready(url, token, time.monotonic() + 120)
        yield SimpleNamespace(url=url, gcs=f"127.0.0.2:{gcs}", token=token, token_path=token_path)
    finally:
        left = stop_processes(lambda: marked_pids(marker, temp_dir))
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"test cluster processes survived SIGKILL: {sorted(left)}"


def _job(tmp_path: Path, name: str) -> Path:
    corpus = tmp_path / "corpus"
    if not corpus.exists():
        from djray.sample_data import write_sample_corpus

        write_sample_corpus(str(corpus), 4, 1, "webdataset", seed=1)
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump({"input": {"path": str(corpus), "format": "webdataset"},
                                   "output": {"path": str(tmp_path / f"out-{name}")}}))
    return cfg


def _djray(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "djray", *args], env=env, capture_output=True, text=True,
                          timeout=400)


def _djray_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("djray:") and "note:" not in line]


@pytest.mark.slow
def test_submit_and_attach_with_the_token_from_the_standard_places(token_cluster, tmp_path):
    """No RAY_AUTH_MODE anywhere on the client: the token alone, from ~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or
    RAY_AUTH_TOKEN, is enough for `djray submit --wait` (the job runs and succeeds) and for a driver attaching with
    `djray run --set ray.address=...`."""
    home = tmp_path / "client-home"
    (home / ".ray").mkdir(parents=True)
    shutil.copy(token_cluster.token_path, home / ".ray" / "auth_token")
    empty = tmp_path / "empty-home"
    empty.mkdir()
    clients = {"home": _env(home), "path": _env(empty, RAY_AUTH_TOKEN_PATH=str(token_cluster.token_path)),
               "env": _env(empty, RAY_AUTH_TOKEN=token_cluster.token)}
    for name, env in clients.items():
        r = _djray(["submit", str(_job(tmp_path, name)), "--address", token_cluster.url, "--wait"], env)
        assert r.returncode == 0, f"{name}: {r.stdout[-3000:]}{r.stderr[-3000:]}"
        assert "SUCCEEDED" in r.stderr and "complete (1/1 shards)" in r.stdout, name
    r = _djray(["run", str(_job(tmp_path, "attach")), "--no-progress", "--set", f"ray.address={token_cluster.gcs}"],
               clients["home"])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "complete (1/1 shards)" in r.stdout


@pytest.mark.slow
def test_without_the_token_one_line_says_what_is_missing(token_cluster, tmp_path):
    empty = tmp_path / "empty-home"
    empty.mkdir()
    cases = {
        "missing": (_env(empty), "requires token authentication and no token was found here"),
        "wrong": (_env(empty, RAY_AUTH_TOKEN="not-the-token"), "refused the token from RAY_AUTH_TOKEN"),
        "disabled": (_env(empty, RAY_AUTH_TOKEN=token_cluster.token, RAY_AUTH_MODE="disabled"),
                     "RAY_AUTH_MODE=disabled is set here"),
    }
    for name, (env, says) in cases.items():
        for args, where in ((["submit", str(_job(tmp_path, name)), "--address", token_cluster.url, "--wait"],
                             token_cluster.url),
                            (["run", str(_job(tmp_path, name)), "--set", f"ray.address={token_cluster.gcs}"],
                             token_cluster.gcs)):
            r = _djray(args, env)
            assert r.returncode == 1, f"{name} {args[0]}: {r.stdout[-2000:]}{r.stderr[-2000:]}"
            lines = _djray_lines(r.stderr)
            assert len(lines) == 1, (name, args[0], r.stderr[-3000:])
            assert f"the Ray cluster at {where} requires token authentication" in lines[0], lines[0]
            assert says in lines[0] and "RAY_AUTH_TOKEN_PATH" in lines[0], lines[0]
            assert "Traceback" not in r.stderr, r.stderr[-3000:]
            assert "not-the-token" not in r.stderr and token_cluster.token not in r.stderr
