"""`djray submit`: validate a job config here, then run it on a Ray cluster through Ray's Job Submission API.

    djray submit CONFIG --address http://HEAD:8265 [--set k=v ...] [--runtime-env FILE] [--wait] [--train]

What is submitted (the resolved config in the job's working directory, the runtime environment, how djray itself
reaches the cluster, why credentials never travel): `djray/job_spec.py`.

Output: the job's submission id alone on stdout (scripts can capture it); how to follow and stop it on stderr. With
`--wait`, the job's logs follow on stdout and the exit code is 0 when the job SUCCEEDED, 1 when it FAILED or was
STOPPED (with the job's error message on stderr). Exit 2: a config, runtime-env or installation problem, found before
anything is sent.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from djray.job_spec import SubmitError, build_job
from djray.runtime import auth

EXIT_OK, EXIT_JOB_FAILED, EXIT_CONFIG = 0, 1, 2

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
_FAILED_LOGS_MARKER = ", last available logs"


def make_client(address: str | None):
    """A JobSubmissionClient for `address` (None: RAY_API_SERVER_ADDRESS / RAY_ADDRESS, as `ray job submit`).

    On a cluster with token authentication it presents the token from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
    ~/.ray/auth_token (djray.runtime.auth), without needing RAY_AUTH_MODE=token here."""
    missing = [m for m in ("requests", "aiohttp") if importlib.util.find_spec(m) is None]
    if missing:
        raise SubmitError("djray submit needs Ray's job client (ray[default]; missing "
                          f"{', '.join(missing)}): pip install 'djray[cluster]'")
    from ray.job_submission import JobSubmissionClient

    headers = auth.http_headers()  # token authentication: RAY_AUTH_TOKEN(_PATH) or ~/.ray/auth_token
    if address is None:
        return JobSubmissionClient(None, headers=headers)
    # Ray lets RAY_API_SERVER_ADDRESS / RAY_ADDRESS override an explicit address; here --address wins.
    saved = {k: os.environ.pop(k) for k in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS") if k in os.environ}
    try:
        return JobSubmissionClient(address, headers=headers)
    finally:
        os.environ.update(saved)


def _status_name(status: Any) -> str:
    return str(getattr(status, "value", status))


def _error_summary(message: str | None, logs: str) -> str:
    """The job's error message without the copy of the log tail Ray appends (already shown), plus djray's own line."""
    message = (message or "").strip()
    head = message.split(_FAILED_LOGS_MARKER, 1)[0].split("\n", 1)[0] if message else "no message from the cluster"
    djray_lines = [line.strip() for line in (logs or message).splitlines() if line.strip().startswith("djray:")]
    return head + (f"\n  {djray_lines[-1]}" if djray_lines else "")


def wait_for_job(client: Any, job_id: str, *, out: TextIO, err: TextIO, poll_s: float = 1.0, max_poll_s: float = 5.0,
                 sleep: Callable[[float], None] = time.sleep, max_failures: int = 12) -> int:
    """Print the job's logs as they grow until it ends; 0 if it SUCCEEDED, 1 if it FAILED or was STOPPED.

    The job API is polled (status, then the whole log; the new part is printed). A connection that drops for a while
    (a port-forward restarting) is retried `max_failures` times in a row before giving up.
    """
    failures = 0

    def poll(fn: Callable[[str], Any]) -> Any:
        nonlocal failures
        while True:
            try:
                result = fn(job_id)
                failures = 0
                return result
            except (OSError, RuntimeError):
                failures += 1
                if failures >= max_failures:
                    raise
                sleep(min(max_poll_s, poll_s * failures))

    shown = 0
    logs = ""
    interval = poll_s
    while True:
        status = _status_name(poll(client.get_job_status))
        logs = poll(client.get_job_logs) or ""  # fetched after the status: a terminal status has its full log
        if len(logs) < shown:  # rotated or replaced: show it again from the start
            shown = 0
        if len(logs) > shown:
            out.write(logs[shown:])
            out.flush()
            shown = len(logs)
            interval = poll_s
        else:
            interval = min(max_poll_s, interval * 1.5)
        if status in TERMINAL:
            break
        sleep(interval)
    info = poll(client.get_job_info)
    status = _status_name(getattr(info, "status", status))
    if status == "SUCCEEDED":
        print(f"djray: job {job_id} SUCCEEDED", file=err)
        return EXIT_OK
    code = getattr(info, "driver_exit_code", None)
    summary = _error_summary(getattr(info, "message", None), logs)
    print(f"djray: job {job_id} {status}" + (f" (exit code {code})" if code is not None else "") + f": {summary}",
          file=err)
    return EXIT_JOB_FAILED


def submit_command(args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """`djray submit`: exit 0 submitted (or SUCCEEDED with --wait), 1 failed/unreachable, 2 before anything was sent."""
    from djray.config import ConfigError

    out = out or sys.stdout
    err = err or sys.stderr
    try:
        job = build_job(args.config, args.overrides, train=args.train, runtime_env_file=args.runtime_env)
    except (ConfigError, SubmitError) as e:
        print(f"djray: {e}", file=err)
        return EXIT_CONFIG
    except OSError as e:  # the temporary working directory could not be written
        print(f"djray: cannot prepare the job's working directory: {e}", file=err)
        return EXIT_CONFIG
    try:
        for note in job.notes:
            print(f"djray: note: {note}", file=err)
        where = args.address or "$RAY_ADDRESS"
        try:
            client = make_client(args.address)
        except SubmitError as e:
            print(f"djray: {e}", file=err)
            return EXIT_CONFIG
        except Exception as e:  # noqa: BLE001 - Ray's AuthenticationError is none of the types below
            if auth.is_auth_error(e):
                print(f"djray: {auth.failure_line(where)}", file=err)
            elif isinstance(e, (OSError, RuntimeError, ValueError)):
                print(f"djray: cannot reach the Ray job API at {where}: {_one_line(e)}", file=err)
            else:
                raise
            return EXIT_JOB_FAILED
        try:
            job_id = client.submit_job(entrypoint=job.entrypoint, runtime_env=job.runtime_env, metadata=job.metadata)
        except Exception as e:  # noqa: BLE001 - as above
            if auth.is_auth_error(e):
                print(f"djray: {auth.failure_line(where)}", file=err)
            elif isinstance(e, (OSError, RuntimeError, ValueError, TypeError)):
                print(f"djray: the cluster refused the job: {_one_line(e)}", file=err)
            else:
                raise
            return EXIT_JOB_FAILED
    finally:
        job.cleanup()  # the working directory was uploaded by submit_job

    address = getattr(client, "get_address", lambda: args.address)() or args.address
    print(job_id, file=out)
    out.flush()
    print(f"djray: submitted {job.kind} job {job_id} to {address}: {job.entrypoint}", file=err)
    if not args.wait:
        print(f"  follow: ray job logs --address {address} --follow {job_id}\n"
              f"  status: ray job status --address {address} {job_id}\n"
              f"  stop:   ray job stop --address {address} {job_id}", file=err)
        return EXIT_OK
    try:
        return wait_for_job(client, job_id, out=out, err=err)
    except KeyboardInterrupt:
        print(f"\ndjray: stopped waiting; job {job_id} keeps running (stop it with: ray job stop --address {address} "
              f"{job_id})", file=err)
        return 130
    except (OSError, RuntimeError) as e:
        print(f"djray: lost the Ray job API while waiting for job {job_id}: {_one_line(e)} (the job may still be "
              "running)", file=err)
        return EXIT_JOB_FAILED


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0] if len(text) > 500 else " ".join(text.split())
