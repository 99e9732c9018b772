"""A clean terminal for `djray run`: djray's own progress and summary on the terminal, Ray's output in a file.

Ray writes to the process's stderr from several places — Python loggers (the token-authentication notice, Ray
Data's progress-bar notice and execution lines), the C++ core worker (an error-level line about actor constructor
arguments on every actor pool, harmless), forwarded worker logs, Python warnings. None of these go through one
Python object, so the run redirects file descriptor 2 to a file and gives djray's own lines the terminal
(`progress.STREAM`, `Capture.say`). The file is kept as `OUTPUT/_djray/logs/ray-<UTC time>.log` once the run has
claimed its output (a config error leaves the output untouched). Nothing real is hidden: djray's errors
(ConfigError, JobError with the root cause) print on the terminal after the redirect ends, a traceback too, and
`error_lines` picks Ray's error-level lines out of the file (minus known harmless ones) for the CLI to show with the
log's path. `djray run --verbose` skips all of this.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TextIO

from djray.io import fs as iofs
from djray.runtime import progress
from djray.runtime.layout import Layout

# Ray's error-level lines: glog-style "[time E pid tid] file.cc:N: ...", Python "ERROR"/"CRITICAL" records, tracebacks
ERROR_LINE = re.compile(r"^\[[^\]]* [EF] \d+ \d+\]|\b(ERROR|CRITICAL)\b|^Traceback \(most recent call last\)")
HARMLESS = (
    # Ray 2.60 logs this on every actor pool whose constructor arguments sit in the object store (ray#53727)
    re.compile(r"core_worker\.cc:\d+: Actor with class name: .* has constructor arguments in the object store"),
    # the GCS asks an actor's worker to exit after Ray Data has already stopped the pool's workers: nothing to kill
    re.compile(r"gcs_actor_scheduler\.cc:\d+: Failed to kill actor \w+, .*KillActor RPC failed .*Socket closed"),
)


@dataclass
class Capture:
    path: str  # the temporary file Ray's output goes to during the run
    terminal: TextIO  # the terminal (the original stderr)
    kept: bool = False  # moved under the output
    discarded: bool = False  # deleted (a config error: nothing ran)

    def say(self, message: str) -> None:
        print(message, file=self.terminal, flush=True)

    def error_lines(self) -> list[str]:
        return error_lines(self.path)  # before `keep` (which may move the file to S3)

    def keep(self, output_uri: str, storage: iofs.Storage) -> str:
        """Copy the log to OUTPUT/_djray/logs/ when the run claimed that output; returns where it is now (else the
        temporary file's path, which is left in place). Idempotent."""
        if self.kept:
            return self.path
        try:
            fs, root = iofs.resolve(output_uri, storage)
            layout = Layout(root)
            if not iofs.exists(fs, layout.job):
                return self.path
            stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            target = f"{layout.state}/logs/ray-{stamp}.log"
            fs.create_dir(f"{layout.state}/logs", recursive=True)
            with open(self.path, "rb") as src, fs.open_output_stream(target) as dst:
                dst.write(src.read())
        except OSError:
            return self.path
        os.unlink(self.path)
        self.path, self.kept = target, True
        return target if not iofs.is_s3(output_uri) else f"s3://{target}"

    def discard(self) -> None:
        self.discarded = True
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def error_lines(path: str) -> list[str]:
    """Error-level lines of a log file that are not known to be harmless."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [line.rstrip("\n") for line in f]
    except OSError:
        return []
    return [line for line in lines if ERROR_LINE.search(line) and not any(h.search(line) for h in HARMLESS)]


@contextlib.contextmanager
def ray_output_to_file() -> Iterator[Capture]:
    """Send everything written to fd 2 to a temporary file; djray's own lines go to the original stderr."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd, path = tempfile.mkstemp(prefix="djray-ray-", suffix=".log")
    saved = os.dup(2)
    terminal = os.fdopen(os.dup(saved), "w", buffering=1, encoding="utf-8", errors="replace")
    os.dup2(fd, 2)
    os.close(fd)
    previous, progress.STREAM = progress.STREAM, terminal
    try:
        yield Capture(path, terminal)
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        progress.STREAM = previous
        terminal.flush()
