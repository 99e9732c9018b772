"""`djray inspect OUTPUT --key K` on a real run: a kept row (raw → governed caption, evidence, the kept patches as a
grid that matches `patch_idx`), a rejected row (stage, reason, detail), an unknown key and an unreadable output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from djray import schema as S
from djray._compat import patch_torchvision
from djray.inspector import DROPPED, KEPT, find_row, patch_grid
from governed import governed_output

patch_torchvision()
pytest.importorskip("timm")


@pytest.fixture(scope="module")
def out(ray_cluster, tmp_path_factory) -> Path:
    return governed_output(tmp_path_factory.mktemp("inspect"))[0]


def _djray(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "djray", *args], capture_output=True, text=True, timeout=120)


def test_patch_grid_is_row_major():
    assert patch_grid([0, 3, 5], 2, 3) == [KEPT + DROPPED + DROPPED, KEPT + DROPPED + KEPT]
    assert patch_grid(None, 2, 3) == [] and patch_grid([1], None, None) == []


def test_kept_row(out):
    row = pq.read_table(out / "data" / "00002.parquet").to_pylist()[0]
    assert row[S.KEY] == "x0good"
    r = _djray("inspect", str(out), "--key", "x0good")
    assert r.returncode == 0, r.stderr
    text = r.stdout
    assert "kept      in data/" in text and "REJECTED" not in text
    assert f"raw       {row[S.CAPTION_RAW]!r}" in text
    assert f"governed  {row[S.CAPTION]!r}  (concat)" in text
    evidence = row[S.VIS_EVIDENCE]
    assert evidence and f"evidence  {', '.join(evidence[:12])}" in text
    assert (f"(+{len(evidence) - 12} more)" in text) == (len(evidence) > 12)
    grid = [line.strip() for line in text.splitlines() if set(line.strip()) <= {KEPT, DROPPED} and line.strip()]
    assert len(grid) == row[S.GRID_H] and all(len(g) == row[S.GRID_W] for g in grid)
    kept = [i for i, ch in enumerate("".join(grid)) if ch == KEPT]
    assert kept == sorted(row[S.PATCH_IDX])
    assert f"{len(kept)}/{row[S.GRID_H] * row[S.GRID_W]} kept" in text


def test_rejected_rows(out):
    r = _djray("inspect", str(out), "--key", "x3tiny")
    assert r.returncode == 0, r.stderr
    assert "REJECTED  stage decode: image_too_small (16x16: shorter side < min_side 32)" in r.stdout
    assert "caption   raw       'a tiny image'" in r.stdout and "patches" not in r.stdout
    dropped = next(x for x in pq.read_table(out / "rejects").to_pylist() if x[S.STAGE] == "sieve:random")
    kind, row = find_row(str(out), dropped[S.KEY], shard=dropped[S.SRC_SHARD])
    assert kind == "rejects" and row[S.REASON] == S.Reason.NOT_SAMPLED and S.IMAGE not in row
    r = _djray("inspect", str(out), "--key", dropped[S.KEY])
    assert "REJECTED  stage sieve:random: not_sampled (outside the seeded sample" in r.stdout
    assert "evidence  " in r.stdout  # phase A's signals travel with the reject


def test_unknown_key_and_bad_output(out, tmp_path):
    r = _djray("inspect", str(out), "--key", "nope")
    assert r.returncode == 1 and "no row with key 'nope'" in r.stderr
    r = _djray("inspect", "gs://bucket/out", "--key", "k")
    assert r.returncode == 2 and "unsupported URI scheme" in r.stderr and "Traceback" not in r.stderr


def test_shard_names_the_file_as_the_writer_does(tmp_path):
    """`--shard dir/a.tar.gz` reads data/dir/a.parquet (the whole archive suffix goes, as in the output layout)."""
    import pyarrow as pa

    (tmp_path / "data" / "dir").mkdir(parents=True)
    pq.write_table(pa.table({S.KEY: ["k1"], S.SRC_SHARD: ["dir/a.tar.gz"], S.SRC_INDEX: [0]}),
                   tmp_path / "data" / "dir" / "a.parquet")
    kind, row = find_row(str(tmp_path), "k1", shard="dir/a.tar.gz")
    assert kind == "data" and row[S.SRC_INDEX] == 0
