"""Process helpers for tests that start their own Ray clusters with `ray start` (tests/test_submit.py,
tests/runtime/test_auth.py): loopback ports, the environment of a node, and stopping every process a test started by
process id (never `ray stop`, which would take down every Ray instance on the machine, the session's own included)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
import urllib.request
from pathlib import Path


def node_env() -> dict[str, str]:
    """The environment of a cluster node: `python` on PATH is the interpreter that has djray (as in the images)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "CUDA_VISIBLE_DEVICES")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def http_json(url: str, body: dict | None = None, timeout: float = 5.0):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read().decode() or "null")


def marked_pids(marker: str, temp_dir: str) -> set[int]:
    """Every process started by this test's `ray start` calls: they inherit the marker variable (daemons that moved to
    another parent and job workers included); those that rewrote their environment still name the temp dir."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in environ or temp_dir.encode() in cmdline:
            pids.add(int(entry.name))
    return pids


def stop_processes(pids_fn, grace: float = 5.0) -> set[int]:
    """SIGTERM, `grace` seconds, then SIGKILL what is left; returns the processes still there after that."""

    def alive() -> set[int]:
        return {p for p in pids_fn() if process_state(p) not in ("Z", "X")}

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        for pid in alive():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while alive() and time.monotonic() < deadline:
            time.sleep(0.25)
    return alive()


def process_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


def has_job_api() -> str | None:
    """None when Ray's dashboard (and with it the job API) can run here, else why not."""
    try:
        import ray.dashboard.optional_deps  # noqa: F401
    except ImportError as e:
        return f"Ray's dashboard / job API is not installed here (pip install 'djray[cluster]'): {e}"
    return None
