"""Markers: one listing per directory, atomic writes (also from a thread pool), unreadable markers count as absent."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pyarrow.fs as pafs

from djray.runtime.layout import Layout, flat, stem, unflat
from djray.runtime.ledger import Ledger


def test_shard_names_round_trip_through_flat_file_names():
    for shard in ("00001.tar", "a/b/c.tar.gz", "weird name #1%.parquet", "ü/ß.tgz"):
        assert "/" not in flat(shard) and unflat(flat(shard)) == shard
    assert stem("a/b/c.tar.gz") == "a/b/c" and stem("x.parquet") == "x" and stem("y.tgz") == "y"


def test_layout_puts_fingerprints_in_directory_names(tmp_path):
    layout = Layout(str(tmp_path) + "/")
    assert layout.root == str(tmp_path)
    assert layout.sealed_dir("ab" * 32).endswith("_djray/sealed/" + "ab" * 8)
    assert layout.done_dir("cd" * 32).endswith("_djray/done/" + "cd" * 8)
    assert layout.signals("sub/00001.tar") == f"{tmp_path}/signals/sub/00001.parquet"


def test_listing_writes_and_reads(tmp_path):
    fs = pafs.LocalFileSystem()
    shards = [f"dir/{i:05d}.tar" for i in range(50)]
    with ThreadPoolExecutor(4) as pool:
        ledger = Ledger(fs, str(tmp_path / "done"), pool)
        assert ledger.listing() == set()  # a missing directory is an empty ledger
        for s in shards:
            ledger.write(s, {"shard": s, "rows_in": 3})
        ledger.flush()
    assert ledger.listing() == set(shards)
    assert ledger.read_many(shards[:5] + ["absent.tar"]) == {s: {"shard": s, "rows_in": 3} for s in shards[:5]}
    # a half-written or foreign file is never taken for a finished shard
    (tmp_path / "done" / f"{flat('dir/00000.tar')}.json").write_text('{"shard": "dir/00')
    assert ledger.read("dir/00000.tar") is None
    assert not list(tmp_path.glob("done/*.tmp-*"))  # atomic writes leave no temporaries
