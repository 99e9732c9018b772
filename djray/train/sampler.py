"""Gain-aware row streams (`data.sampler`, seed-algorithms §6.4; InfoGrowth `GainSampler`, `GainSamplerV2`).

Both read the `gain` column an `infogrowth` sieve publishes (G in [0, 1]; a null gain counts as 1).

* `infogrowth_static` — an epoch is the worker's share length N: sweeps over the share, each keeping every row
  independently with probability G (Bernoulli thinning, in a seeded shuffled order), concatenated until N rows
  were emitted; the last sweep is cut where the epoch is full (a shuffled sweep's prefix: a sample without
  replacement of that sweep). Expected frequency ∝ G.
* `infogrowth_dynamic` — epochs alternate, starting with the gain phase: one sweep with probability G, then one with
  G' = max(0.1, 1 − G), and so on; the epoch length varies (≈ ΣG or ΣG').

Every draw is a function of (data.seed, rank, epoch, sweep, row group, row): the state (epoch, sweep, unit, row,
emitted) is the whole sampler state a checkpoint needs, so a resumed run draws exactly what an uninterrupted one
would. Workers read disjoint shares (`DataPlan.share`), so they never draw the same row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.fs as pafs

from djray import schema as S
from djray.train.data import RowStream, Shard, StreamState, TrainDataError

SAMPLERS = ("none", "infogrowth_static", "infogrowth_dynamic")
DYNAMIC_FLOOR = 0.1


@dataclass
class SamplerState(StreamState):
    sweep: int = 0  # sweep over the share within this epoch (static: several)
    emitted: int = 0  # rows emitted in this epoch

    def as_dict(self) -> dict[str, int]:
        return {**super().as_dict(), "sweep": self.sweep, "emitted": self.emitted}


class GainRowStream(RowStream):
    def __init__(self, fs: pafs.FileSystem, shards: list[Shard], columns: list[str], *, seed: int, rank: int,
                 sampler: str, shuffle: bool = True, state: dict | None = None):
        if sampler not in SAMPLERS[1:]:
            raise ValueError(f"unknown sampler {sampler!r}")
        cols = list(columns) + ([S.GAIN] if S.GAIN not in columns else [])
        super().__init__(fs, shards, cols, seed=seed, rank=rank, shuffle=shuffle)
        self.user_columns = list(columns)
        self.sampler = sampler
        self.state = SamplerState(**(state or {}))
        self.share_rows = sum(n for _, _, n in self.units)
        self._draws: tuple[tuple[int, int, int], np.ndarray, np.ndarray] | None = None

    def _read(self, uid: int) -> dict[str, list]:
        """One row group's columns; the last one stays cached (a small share meets the same unit sweep after sweep)."""
        if self._cached is None or self._cached[1] != uid:
            self._cached = (-1, uid, self._read_unit(uid), np.arange(0))
        return self._cached[2]

    def _unit(self, epoch: int, sweep: int, uid: int):
        """(columns, row order, per-row keep probability · compared to a uniform draw → keep mask)."""
        if self._draws is not None and self._draws[0] == (epoch, sweep, uid):
            return self._cols, self._draws[1], self._draws[2]
        cols = self._read(uid)
        nrows = self.units[uid][2]
        rng = self._rng(epoch, sweep, uid)
        order = rng.permutation(nrows) if self.shuffle else np.arange(nrows)
        u = self._rng(epoch, sweep, uid, 1).random(nrows)
        g = np.array([1.0 if v is None else float(v) for v in cols[S.GAIN]])
        p = g if self.sampler == "infogrowth_static" or epoch % 2 == 0 else np.maximum(DYNAMIC_FLOOR, 1.0 - g)
        self._cols, self._draws = cols, ((epoch, sweep, uid), order, u < p)
        return cols, order, self._draws[2]

    def _next_epoch(self, st: SamplerState) -> None:
        st.epoch, st.sweep, st.unit, st.row, st.emitted = st.epoch + 1, 0, 0, 0, 0

    def take(self, n: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
        rows: list[dict[str, Any]] = []
        st: SamplerState = self.state
        static = self.sampler == "infogrowth_static"
        empty_sweeps = 0
        while len(rows) < n:
            if static and st.emitted >= self.share_rows:
                self._next_epoch(st)
                continue
            order = self._unit_order(st.epoch, st.sweep)
            if st.unit >= len(order):
                empty_sweeps = empty_sweeps + 1 if not rows else 0
                if empty_sweeps > 2 and not rows:
                    raise TrainDataError(f"data.sampler: {self.sampler} drew no row in two whole sweeps (gains all 0?)")
                if static:
                    st.sweep, st.unit, st.row = st.sweep + 1, 0, 0
                else:
                    self._next_epoch(st)
                continue
            uid = int(order[st.unit])
            cols, row_order, keep = self._unit(st.epoch, st.sweep, uid)
            if st.row >= len(row_order):
                st.unit, st.row = st.unit + 1, 0
                continue
            i = int(row_order[st.row])
            st.row += 1
            if not keep[i]:
                continue
            row = {c: cols[c][i] for c in self.user_columns}
            if row.get(S.IMAGE) is None or row.get(S.CAPTION) is None:
                continue
            st.emitted += 1
            row["_epoch"] = st.epoch
            rows.append(row)
        return rows, st.as_dict()
