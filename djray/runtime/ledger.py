"""Completion markers: small JSON files, one per shard, in a directory per phase (and fingerprint).

The driver lists a marker directory once at start-up (a resume of 40,000 shards costs a few listings, not 40,000
GETs), writes markers from a small thread pool (a write on S3 takes tens of milliseconds), and reads marker contents
only where it needs them (the manifest's per-shard counts), in parallel. Every marker is written atomically after the
files it vouches for, so a marker that exists is complete, and one that cannot be parsed is treated as absent.
"""

from __future__ import annotations

import json
import posixpath
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pyarrow.fs as pafs

from djray.io import fs as iofs
from djray.runtime.layout import flat, unflat

THREADS = 16


class Ledger:
    """The markers of one directory, keyed by shard path."""

    def __init__(self, fs: pafs.FileSystem, directory: str, pool: ThreadPoolExecutor | None = None):
        self.fs, self.directory = fs, directory.rstrip("/")
        self._pool = pool
        self._pending: list[Future] = []

    def path(self, src_shard: str) -> str:
        return f"{self.directory}/{flat(src_shard)}.json"

    def listing(self) -> set[str]:
        """Shards with a marker, from one (recursive) listing of the directory."""
        infos = iofs.file_info(self.fs, pafs.FileSelector(self.directory, recursive=False, allow_not_found=True))
        return {unflat(posixpath.basename(i.path)[: -len(".json")]) for i in infos
                if i.type == pafs.FileType.File and i.path.endswith(".json")}

    def read(self, src_shard: str) -> dict[str, Any] | None:
        try:
            return iofs.read_json(self.fs, self.path(src_shard))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None  # never take a half-written or foreign file for a finished shard

    def read_many(self, shards: list[str]) -> dict[str, dict[str, Any]]:
        """Contents of the markers of `shards` that exist, read in parallel."""
        with ThreadPoolExecutor(THREADS) as pool:
            found = dict(zip(shards, pool.map(self.read, shards)))
        return {s: m for s, m in found.items() if m is not None}

    def write(self, src_shard: str, marker: dict[str, Any]) -> None:
        """Write a marker; with a pool, in the background (call `flush` before relying on it)."""
        if self._pool is None:
            iofs.write_json(self.fs, self.path(src_shard), marker)
        else:
            self._pending.append(self._pool.submit(iofs.write_json, self.fs, self.path(src_shard), marker))

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        for f in pending:
            f.result()

    def clear(self) -> None:
        iofs.delete_dir(self.fs, self.directory)
