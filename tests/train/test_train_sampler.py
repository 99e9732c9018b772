"""Gain-aware samplers (seed-algorithms §6.4): frequencies against their expectation (chi-square on 100k draws, fixed
seed), dynamic phases alternating by epoch, exact resume from the saved state, disjoint shares per worker."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from djray import schema as S
from djray.io.fs import Storage
from djray.train.config import parse_train_config
from djray.train.data import DataPlan, Shard, TrainDataError, inspect_data, open_stream

ROWS, FILES, GROUP = 200, 4, 25


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    root = tmp_path_factory.mktemp("gain") / "data"
    root.mkdir()
    rng = np.random.default_rng(0)
    gain = np.round(rng.uniform(0.05, 1.0, ROWS), 3)
    gain[:5] = [0.0, 1.0, 0.02, 0.95, 0.5]
    shards = []
    for f in range(FILES):
        idx = np.arange(f, ROWS, FILES)
        t = pa.table({S.KEY: [f"r{i:03d}" for i in idx], S.IMAGE: [b"x"] * len(idx),
                      S.CAPTION: ["c"] * len(idx), S.GAIN: pa.array(gain[idx], pa.float32())})
        path = root / f"{f:05d}.parquet"
        pq.write_table(t, path, row_group_size=GROUP)
        shards.append(Shard(str(path), path.name, len(idx), (GROUP, len(idx) - GROUP)))
    plan = DataPlan(uri=str(root.parent), storage=Storage(), shards=shards, image_size=64, grid=None,
                    columns=[S.KEY, S.IMAGE, S.CAPTION, S.GAIN], has_scores=False)
    return plan, {f"r{i:03d}": float(np.float32(g)) for i, g in enumerate(gain)}


def _cfg(sampler: str, seed: int = 7):
    return SimpleNamespace(patches=SimpleNamespace(mode="full"),
                           data=SimpleNamespace(seed=seed, shuffle=True, sampler=sampler))


def _draw(stream, n: int, chunk: int = 1000):
    rows = []
    while len(rows) < n:
        rows += stream.take(min(chunk, n - len(rows)))[0]
    return rows


def _chi2_ok(counts: np.ndarray, expected_share: np.ndarray) -> tuple[float, float]:
    """(statistic, the 99.9 % critical value by Wilson–Hilferty) over the cells of non-zero expectation."""
    m = expected_share > 0
    exp = counts[m].sum() * expected_share[m] / expected_share[m].sum()
    stat = float(((counts[m] - exp) ** 2 / exp).sum())
    df = int(m.sum()) - 1
    crit = df * (1 - 2 / (9 * df) + 3.09 * np.sqrt(2 / (9 * df))) ** 3
    return stat, crit


def test_static_frequencies_follow_the_gain(pool):
    plan, gain = pool
    rows = _draw(open_stream(_cfg("infogrowth_static"), plan, 0, 1), 100_000)
    keys = sorted(gain)
    count = {k: 0 for k in keys}
    for r in rows:
        count[r[S.KEY]] += 1
    counts, g = np.array([count[k] for k in keys], float), np.array([gain[k] for k in keys])
    assert count["r000"] == 0  # gain 0 is never drawn
    stat, crit = _chi2_ok(counts, g)
    assert stat < crit, (stat, crit)
    epochs = {}
    for r in rows:
        epochs[r["_epoch"]] = epochs.get(r["_epoch"], 0) + 1
    full = [n for e, n in epochs.items() if e < max(epochs)]
    assert set(full) == {ROWS}  # every finished epoch has exactly the share length


def test_dynamic_alternates_gain_and_complement(pool):
    plan, gain = pool
    rows = _draw(open_stream(_cfg("infogrowth_dynamic"), plan, 0, 1), 100_000)
    keys = sorted(gain)
    g = np.array([gain[k] for k in keys])
    last = max(r["_epoch"] for r in rows)
    for parity, p in ((0, g), (1, np.maximum(0.1, 1 - g))):
        count = {k: 0 for k in keys}
        for r in rows:
            if r["_epoch"] % 2 == parity and r["_epoch"] < last:
                count[r[S.KEY]] += 1
        stat, crit = _chi2_ok(np.array([count[k] for k in keys], float), p)
        assert stat < crit, (parity, stat, crit)
    sizes = {}
    for r in rows:
        sizes[r["_epoch"]] = sizes.get(r["_epoch"], 0) + 1
    even = np.mean([n for e, n in sizes.items() if e % 2 == 0 and e < last])
    odd = np.mean([n for e, n in sizes.items() if e % 2 == 1 and e < last])
    assert abs(even - g.sum()) < 3 and abs(odd - np.maximum(0.1, 1 - g).sum()) < 3


@pytest.mark.parametrize("sampler", ["infogrowth_static", "infogrowth_dynamic"])
def test_resume_draws_exactly_what_an_uninterrupted_run_draws(pool, sampler):
    plan, _ = pool
    whole = _draw(open_stream(_cfg(sampler), plan, 0, 1), 1500, chunk=300)
    first = open_stream(_cfg(sampler), plan, 0, 1)
    head = _draw(first, 700, chunk=350)
    state = first.take(0)[1]
    resumed = open_stream(_cfg(sampler), plan, 0, 1, state=state)
    tail = _draw(resumed, 800, chunk=400)
    assert [r[S.KEY] for r in head + tail] == [r[S.KEY] for r in whole]
    assert state["sweep"] >= 0 and "emitted" in state


def test_workers_draw_from_disjoint_shares(pool):
    plan, _ = pool
    seen = [{r[S.KEY] for r in _draw(open_stream(_cfg("infogrowth_static"), plan, rank, 2), 3000)} for rank in (0, 1)]
    assert seen[0] and seen[1] and not seen[0] & seen[1]


def test_preflight_needs_the_gain_column(tmp_path):
    data = tmp_path / "g" / "data"
    data.mkdir(parents=True)
    pq.write_table(pa.table({S.KEY: ["a"], S.IMAGE: [b"x"], S.CAPTION: ["c"]}), data / "00000.parquet")
    raw = {"data": {"path": str(tmp_path / "g"), "sampler": "infogrowth_static"}, "model": {"arch": "clip_tiny"},
           "patches": {"mode": "full"}, "train": {"batch_size": 8, "steps": 4}, "output": {"path": str(tmp_path / "o")}}
    cfg = parse_train_config(raw)
    with pytest.raises(TrainDataError, match=r"lacks column 'gain' needed by data.sampler=infogrowth_static"):
        inspect_data(cfg, cfg.model.resolved())
    with pytest.raises(Exception, match="sampler"):
        parse_train_config({**raw, "data": {"path": "/x", "sampler": "gain"}})
    assert inspect_data(parse_train_config({**raw, "data": {"path": str(tmp_path / "g")}}),
                        cfg.model.resolved()).num_rows == 1
