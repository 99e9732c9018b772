"""Background probes the benchmarks share: a value polled in a thread while a measured block runs, its peak kept."""

from __future__ import annotations

import os
import threading
from pathlib import Path


class Poller:
    """Calls `sample()` every `interval` seconds between `__enter__` and `__exit__`; keeps the largest value."""

    def __init__(self, interval: float = 0.1):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.sample())
            self._stop.wait(self.interval)

    def sample(self) -> int:
        raise NotImplementedError


class PeakBytes(Poller):
    """Largest total size of the files under a directory."""

    def __init__(self, root: Path, interval: float = 0.1):
        super().__init__(interval)
        self.root = root

    def sample(self) -> int:
        total = 0
        for dirpath, _, files in os.walk(self.root):
            for f in files:
                try:
                    total += os.path.getsize(os.path.join(dirpath, f))
                except OSError:
                    pass
        return total


class WorkerRss(Poller):
    """Largest RSS (kB) of one Ray worker process (command line starting with 'ray::'), read from /proc."""

    def sample(self) -> int:
        largest = 0
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if not f.read(5).startswith(b"ray::"):
                        continue
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            largest = max(largest, int(line.split()[1]))
            except OSError:
                continue
        return largest


class DriverRss(Poller):
    """RSS (kB) of this process."""

    def sample(self) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0
