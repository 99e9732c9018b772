"""A small progress display for long runs: one line, refreshed in place on a terminal, every few seconds in logs."""

from __future__ import annotations

import sys
import time
from typing import TextIO

STREAM: TextIO | None = None  # where progress goes when no stream is given (None: sys.stderr); runtime/quiet.py


class Progress:
    def __init__(self, phase: str, total: int, unit: str = "shards", *, enabled: bool = True,
                 stream: TextIO | None = None, interval: float | None = None):
        self.phase, self.total, self.unit = phase, total, unit
        self.stream = stream or STREAM or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.interval = interval if interval is not None else (0.5 if self.tty else 10.0)
        self.start = time.monotonic()
        self._last = 0.0
        self.done = 0
        self.rows = 0
        self._shown: tuple[int, int] | None = None

    def update(self, done: int | None = None, rows: int | None = None, force: bool = False) -> None:
        if done is not None:
            self.done = done
        if rows is not None:
            self.rows = rows
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < self.interval):
            return
        if force and self._shown == (self.done, self.rows):
            return
        self._last, self._shown = now, (self.done, self.rows)
        elapsed = max(now - self.start, 1e-9)
        line = (f"[{self.phase}] {self.done}/{self.total} {self.unit}  {self.rows:,} rows  "
                f"{self.rows / elapsed:,.1f} rows/s  {elapsed:,.0f}s")
        self.stream.write(("\r" + line + "\x1b[K") if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.update(force=True)
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
