"""Resume: SIGKILL the driver mid-run, re-run the same command, get the uninterrupted run's rows, no duplicates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from djray import pipeline
from djray.config import ConfigError, parse_config
from djray.sample_data import write_sample_corpus

pytestmark = pytest.mark.slow


def _rows(out: Path) -> dict[str, list[tuple]]:
    """All output rows, data, rejects and signals, as comparable tuples (image bytes included)."""
    rows: dict[str, list[tuple]] = {"data": [], "rejects": [], "signals": []}
    for kind in rows:
        for f in sorted((out / kind).glob("*.parquet")):
            t = pq.read_table(f)
            cols = [c for c in t.column_names]
            rows[kind] += [tuple(r[c] for c in cols) for r in t.to_pylist()]
    return rows


def _cli(config: Path, address: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_ADDRESS": address}
    return subprocess.Popen([sys.executable, "-m", "djray", "run", str(config), "--no-progress", *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"run ended before the kill point:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, "kill point not reached"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


SIEVES = [{"op": "exact_dedup"}, {"op": "random", "keep_fraction": 0.6, "seed": 4}]


def test_sigkill_then_resume_matches_uninterrupted_run(ray_cluster, tmp_path):
    corpus = tmp_path / "corpus"
    write_sample_corpus(str(corpus), 240, 24, "webdataset", seed=11)
    reference = tmp_path / "reference"
    pipeline.run(parse_config({"input": {"path": str(corpus), "format": "webdataset"},
                               "output": {"path": str(reference)}, "sieve": SIEVES}),
                 progress=False, log=lambda m: None)

    out = tmp_path / "out"
    config = tmp_path / "job.yaml"
    # one seal task per shard, so that some shards are sealed before the stream ends; one final-write task at a
    # time, so that the driver can be killed between two of them
    config.write_text(f"input: {{path: {corpus}, format: webdataset, rows_per_block: 4}}\noutput: {{path: {out}}}\n"
                      f"ray: {{max_concurrent_finalize: 1, seal_rows: 1}}\nsieve: {json.dumps(SIEVES)}\n")
    state = out / "_djray"

    # 1st attempt: killed while shards are streaming (some sealed, none final)
    _kill_when(_cli(config, ray_cluster), lambda: len(list(state.glob("sealed/*/*.json"))) >= 2)
    sealed_after_1 = len(list(state.glob("sealed/*/*.json")))
    assert sealed_after_1 < 24 and not (out / "manifest.json").exists()

    # 2nd attempt: killed during the selection (phase B), once its first step is marked done
    _kill_when(_cli(config, ray_cluster), lambda: len(list(state.glob("select/*.json"))) >= 1)
    assert not list(state.glob("done/*/*.json"))

    # 3rd attempt: killed while final files are being written
    _kill_when(_cli(config, ray_cluster), lambda: len(list(state.glob("done/*/*.json"))) >= 1)
    assert not (out / "manifest.json").exists() or json.loads((out / "manifest.json").read_text())["status"] != "complete"

    # 4th attempt completes
    proc = _cli(config, ray_cluster)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["accounting_ok"]
    assert manifest["rows_in"] == 240 and manifest["shards_done"] == 24
    assert manifest["rejected_by_reason"].get("not_sampled", 0) > 0

    got, want = _rows(out), _rows(reference)
    assert got == want
    keys = [r[0] for r in got["data"]]
    assert len(keys) == len(set(keys))
    assert not (state / "staging").exists()

    # a 5th run of the same command has nothing to do and changes nothing
    proc = _cli(config, ray_cluster)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    assert _rows(out) == want


def test_different_config_refuses_unless_overwrite(ray_cluster, tmp_path):
    corpus = tmp_path / "corpus"
    write_sample_corpus(str(corpus), 12, 2, "webdataset", seed=1)
    raw = {"input": {"path": str(corpus), "format": "webdataset"}, "output": {"path": str(tmp_path / "out")}}
    pipeline.run(parse_config(raw), progress=False, log=lambda m: None)

    changed = {**raw, "decode": {"min_side": 300}}
    with pytest.raises(ConfigError, match="other signals parameters"):
        pipeline.run(parse_config(changed), progress=False, log=lambda m: None)
    # runtime-only keys do not count as a different config
    pipeline.run(parse_config({**raw, "input": {**raw["input"], "rows_per_block": 3}}), progress=False,
                 log=lambda m: None)

    manifest = pipeline.run(parse_config({**changed, "output": {**raw["output"], "mode": "overwrite"}}),
                            progress=False, log=lambda m: None)
    assert manifest["rejected_by_reason"].get("image_too_small", 0) > 0
    assert manifest["rows_in"] == 12


def test_foreign_non_empty_output_is_refused(ray_cluster, tmp_path):
    corpus = tmp_path / "corpus"
    write_sample_corpus(str(corpus), 4, 1, "webdataset", seed=1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("not djray's")
    cfg = parse_config({"input": {"path": str(corpus), "format": "webdataset"}, "output": {"path": str(out)}})
    with pytest.raises(ConfigError, match="not empty"):
        pipeline.prepare(cfg)
    assert (out / "precious.txt").read_text() == "not djray's"
