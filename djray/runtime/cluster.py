"""Ray bootstrap and the errors of a run: attach to a cluster or start the embedded local instance, Ray Data's
context, and one-line root causes of failed tasks."""

from __future__ import annotations

import os
import re
import socket
from typing import Any

import ray

from djray.config import JobConfig
from djray.runtime import auth


class JobError(RuntimeError):
    """The job could not complete (infrastructure, a failed task). Re-running the same command resumes it."""


def ensure_ray(cfg: JobConfig) -> None:
    """Attach to `ray.address` / RAY_ADDRESS, or start a local instance (the embedded default)."""
    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "WARNING", "log_to_driver": True}
    if address:
        _check_reachable(address)
        auth.enable_for_driver()  # token authentication: the token from RAY_AUTH_TOKEN(_PATH) or ~/.ray/auth_token
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ray.exceptions.AuthenticationError) as e:
            if auth.is_auth_error(e):
                raise JobError(auth.failure_line(address)) from None
            raise JobError(f"cannot attach to the Ray cluster at {address}: {e}") from None
    elif cfg.ray.num_cpus is None and running_local_instance():
        ray.init(address="auto", **kwargs)  # `ray start --head` on this machine: no start-up, warm workers
    else:
        ray.init(num_cpus=cfg.ray.num_cpus, **kwargs)
    configure_ray_data()


def running_local_instance(path: str = "/tmp/ray/ray_current_cluster") -> bool:
    """True when `ray start --head` left a Ray instance on this machine that still answers (reusing it saves the
    seconds of starting one, and its workers are already warm). An in-process `ray.init` writes no such file."""
    try:
        with open(path, encoding="utf-8") as f:
            host, _, port = f.read().strip().rpartition(":")
        socket.create_connection((host, int(port)), timeout=0.5).close()
    except (OSError, ValueError):
        return False
    return host in ("127.0.0.1", "localhost") or host in _local_addresses()


def _local_addresses() -> set[str]:
    try:
        return {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    except OSError:
        return set()


def attached_to_cluster(cfg: JobConfig) -> bool:
    """True when the job runs on a cluster it attached to (`ray.address` / RAY_ADDRESS), not a local instance."""
    return bool(cfg.ray.address or os.environ.get("RAY_ADDRESS"))


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a `host:port` GCS address nobody listens on (ray.init would retry for minutes)."""
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():
        return  # "auto", "ray://…" (Ray Client): leave it to ray.init
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as e:
        raise JobError(f"cannot reach the Ray cluster at {address}: {e.strerror or e}") from None


_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Unavailable|Interrupt)): .+")


def root_cause(e: BaseException) -> str:
    """One line naming what went wrong. Ray wraps a task's or an actor constructor's exception in its own error whose
    first line says only which worker died; the original `SomeError: message` is the last such line of its text."""
    text = f"{type(e).__name__}: {e}"
    lines = [line.strip() for line in text.splitlines() if _EXCEPTION_LINE.match(line.strip())]
    return (lines[-1] if lines else text.splitlines()[0])[:800]


def configure_ray_data() -> None:
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.verbose_stats_logs = False


def cluster_cpus() -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))
