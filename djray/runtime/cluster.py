"""Ray bootstrap and the errors of a run: attach to a cluster or start the embedded local instance, Ray Data's
context, and one-line root causes of failed tasks."""

from __future__ import annotations

import os
import re
import socket
from typing import Any

import ray

from djray.config import ConfigError, JobConfig
from djray.ops.base import Op
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
    else:
        ray.init(num_cpus=cfg.ray.num_cpus, **kwargs)
    configure_ray_data()


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


def check_cpu_budget(cfg: JobConfig, phases: list[list[Op]]) -> None:
    """Actor pools that hold every CPU of a fixed-size instance starve the read and write tasks: Ray would wait
    forever. Refuse that before starting (an autoscaling cluster can add nodes, so only the local instance)."""
    if cfg.ray.address or os.environ.get("RAY_ADDRESS"):
        return
    cpus = ray.cluster_resources().get("CPU", 0)
    from djray.runtime.fuse import fuse_stateful

    for ops in map(fuse_stateful, phases):
        held = sum(op.resources.pool_size * op.resources.num_cpus for op in ops if op.stateful)
        if held and held > cpus - 0.5:
            section = next(op.stage for op in ops if op.stateful)
            raise ConfigError(f"{section}.resources: actor pools hold {held:g} of the {cpus:g} CPUs of the local "
                              "Ray instance, leaving none for read/write tasks; lower pool_size or num_cpus "
                              "(e.g. num_cpus: 0.5) or give the instance more CPUs (ray.num_cpus)")
