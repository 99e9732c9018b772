"""Governed Parquet → training batches, through the data contract (ARCHITECTURE §2) only.

`inspect_data` is the preflight: it lists `data.path/data/**.parquet`, reads only footers (schema, row counts, row
group statistics, the `djray.geometry` record) and fails with one message before any training starts when a column
the patch mode needs is missing, the stored patch grid does not match the model's, or there are no rows.

Each worker reads its own share of the files (`files[rank::world]`). Its stream walks the share's row groups in a
seeded order per epoch and each row group's rows in a seeded order; the position (epoch, row group, row) is the
whole data state a checkpoint needs, so a resumed run reads exactly the rows an uninterrupted run would.

Batches (canonical crops, flips, one k per batch) are made in `djray.train.batches`.
"""

from __future__ import annotations

import json
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from djray import schema as S
from djray.config import ConfigError
from djray.geometry import DEFAULT_MAX_PIXELS, geometry_mismatch
from djray.io.errors import is_storage_error
from djray.io.fs import Storage, file_info, join, open_sequential, read_parquet, resolve
from djray.train.archs import ClipArch
from djray.train.config import TrainConfig


class TrainDataError(ConfigError):
    """The training data cannot be used as configured (reported before training starts, exit 2)."""


@dataclass(frozen=True)
class Shard:
    path: str  # inside the filesystem
    rel: str  # relative to the data directory (for messages)
    num_rows: int
    row_groups: tuple[int, ...]  # rows per row group


@dataclass
class DataPlan:
    """What preflight found; picklable (it travels to Ray Train workers)."""

    uri: str
    storage: Storage
    shards: list[Shard]
    image_size: int
    grid: int | None  # stored patch grid side (kept / rescore)
    columns: list[str]
    has_scores: bool
    num_rows: int = 0
    footer_geometry: dict[str, Any] | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS  # decode.max_pixels recorded at governance time (the footer), else default

    def share(self, rank: int, world: int) -> list[Shard]:
        return self.shards[rank::world]

    def steps_per_epoch(self, world: int, micro_batch: int) -> int:
        return min(sum(s.num_rows for s in self.share(r, world)) for r in range(world)) // micro_batch

    def check_workers(self, world: int, micro_batch: int) -> int:
        """Every worker needs at least one full micro batch of rows; returns steps per epoch."""
        if len(self.shards) < world:
            raise TrainDataError(f"data.path: {len(self.shards)} non-empty shard(s) for {world} workers: each worker "
                                 "reads its own shards, so there must be at least as many shards as workers")
        spe = self.steps_per_epoch(world, micro_batch)
        if spe < 1:
            smallest = min(sum(s.num_rows for s in self.share(r, world)) for r in range(world))
            raise TrainDataError(f"data.path: a worker's share holds {smallest} rows, fewer than one micro batch "
                                 f"({micro_batch} = train.batch_size / workers); lower train.batch_size")
        return spe


def _list_parquet(fs: pafs.FileSystem, root: str) -> list[str]:
    infos = file_info(fs, pafs.FileSelector(root, recursive=True, allow_not_found=True))
    out = []
    for i in infos:
        rel = posixpath.relpath(i.path, root)
        if i.type == pafs.FileType.File and i.path.endswith(".parquet") and not any(
                p.startswith((".", "_")) for p in rel.split("/")):
            out.append(i.path)
    return sorted(out)


def _needed_columns(mode: str) -> list[str]:
    cols = [S.KEY, S.IMAGE, S.CAPTION]
    if mode == "kept":
        cols += [S.PATCH_IDX, S.GRID_H, S.GRID_W, S.PATCH_SIZE]
    elif mode == "rescore":
        cols += [S.PATCH_SCORES, S.GRID_H, S.GRID_W, S.PATCH_SIZE]
    return cols


def _column_range(fs: pafs.FileSystem, path: str, md, name: str) -> tuple[int, int] | None:
    """(min, max) of an integer column from row-group statistics; reads the column when statistics are missing."""
    idx = md.schema.to_arrow_schema().get_field_index(name)
    lo = hi = None
    for g in range(md.num_row_groups):
        st = md.row_group(g).column(idx).statistics
        if st is None or not st.has_min_max:
            col = read_parquet(fs, path, [name]).column(name).drop_null()
            if len(col) == 0:
                return None
            vals = np.asarray(col.to_numpy())
            return int(vals.min()), int(vals.max())
        lo = st.min if lo is None else min(lo, st.min)
        hi = st.max if hi is None else max(hi, st.max)
    return None if lo is None else (int(lo), int(hi))


def _inspect_file(fs: pafs.FileSystem, path: str, rel: str, needed: list[str], grid_cols: bool):
    with open_sequential(fs, path) as f:
        try:
            md = pq.ParquetFile(f).metadata
        except Exception as e:  # noqa: BLE001 - any unreadable footer is a data problem for the user
            if is_storage_error(e):  # ... unless the store failed: that is no property of the file
                raise
            raise TrainDataError(f"data.path: {rel} is not a readable Parquet file: {e}") from None
    names = set(md.schema.to_arrow_schema().names)
    missing = [c for c in needed if c not in names]
    meta = md.metadata or {}
    geometry = json.loads(meta[S.META_GEOMETRY]) if S.META_GEOMETRY in meta else None
    ranges = {}
    if grid_cols and not missing and md.num_rows:
        ranges = {c: _column_range(fs, path, md, c) for c in (S.GRID_H, S.GRID_W, S.PATCH_SIZE)}
    rgs = tuple(md.row_group(g).num_rows for g in range(md.num_row_groups))
    return Shard(path, rel, md.num_rows, rgs), names, missing, geometry, ranges


def inspect_data(cfg: TrainConfig, arch: ClipArch) -> DataPlan:
    """Preflight over footers only. Raises TrainDataError with one message naming the key and the file."""
    storage = Storage.of(cfg.storage)
    mode = cfg.patches.mode
    try:
        fs, root = resolve(cfg.data.path, storage)
        info = file_info(fs, root)
        if info.type == pafs.FileType.NotFound:
            raise TrainDataError(f"data.path: not found: {cfg.data.path}")
        data_dir = join(root, "data")
        if file_info(fs, data_dir).type != pafs.FileType.Directory:
            data_dir = root  # a directory of governed Parquet files itself
        files = _list_parquet(fs, data_dir) if info.type == pafs.FileType.Directory else [root]
    except ValueError as e:
        raise TrainDataError(f"data.path: {e}") from None
    if not files:
        raise TrainDataError(f"data.path: no Parquet files under {cfg.data.path} (expected a djray output "
                             "directory with data/*.parquet)")
    needed = _needed_columns(mode) + ([S.GAIN] if cfg.data.sampler != "none" else [])
    base = data_dir if info.type == pafs.FileType.Directory else posixpath.dirname(root)
    jobs = [(p, posixpath.relpath(p, base)) for p in files]
    with ThreadPoolExecutor(min(16, len(jobs))) as pool:
        found = list(pool.map(lambda j: _inspect_file(fs, j[0], j[1], needed, mode != "full"), jobs))

    shards, geometries, columns = [], {}, None
    for shard, names, missing, geometry, ranges in found:
        if S.GAIN in missing:
            raise TrainDataError(f"data.path: {shard.rel} lacks column 'gain' needed by data.sampler="
                                 f"{cfg.data.sampler} (govern with an `infogrowth` sieve, or use data.sampler: none)")
        if missing:
            hint = (" (govern with a `vision:` section, or train with patches.mode: full)"
                    if set(missing) & {S.PATCH_IDX, S.PATCH_SCORES, S.GRID_H} else "")
            raise TrainDataError(f"data.path: {shard.rel} lacks column(s) {missing} needed by patches.mode={mode}"
                                 f"{hint}")
        columns = sorted(names) if columns is None else columns
        if shard.num_rows == 0:
            continue
        shards.append(shard)
        geometries[shard.rel] = geometry
        if mode != "full":
            _check_grid(shard, geometry, ranges, arch)
    if not shards:
        raise TrainDataError(f"data.path: the dataset is empty ({len(files)} Parquet file(s), 0 rows)")

    image_size = arch.image_size
    geometry = next(iter(geometries.values()))
    if mode != "full":
        sizes = {g["image_size"] for g in geometries.values()}
        if len(sizes) > 1:
            raise TrainDataError(f"data.path: shards were governed at different image sizes {sorted(sizes)}")
        _check_geometry(geometries)
    has_scores = S.PATCH_SCORES in (columns or [])
    max_pixels = int((geometry or {}).get("max_pixels") or DEFAULT_MAX_PIXELS)
    return DataPlan(uri=cfg.data.path, storage=storage, shards=shards, image_size=image_size,
                    grid=arch.grid if mode != "full" else None, columns=columns or [], has_scores=has_scores,
                    num_rows=sum(s.num_rows for s in shards), footer_geometry=geometry, max_pixels=max_pixels)


def _check_geometry(geometries: dict[str, dict]) -> None:
    """Every shard's whole geometry record (decode, resize rule, interpolation, crop, Pillow version, pixel limit)
    equals the first one's, and this process reproduces it: else the stored patch indices name other pixels."""
    (first_rel, first), *rest = geometries.items()
    for rel, g in rest:
        if g != first:
            keys = sorted(k for k in set(g) | set(first) if g.get(k) != first.get(k))
            raise TrainDataError(f"data.path: {rel} and {first_rel} were governed with different geometry "
                                 f"({', '.join(keys)}): their patch indices do not refer to the same crops")
    diff = geometry_mismatch(first)
    if diff:
        raise TrainDataError(f"data.path: geometry mismatch: the data was governed with a crop this trainer does not "
                             f"reproduce ({'; '.join(diff)}): train with the decode stack that governed the data "
                             f"(recorded in the djray.geometry footer of {first_rel})")


def _check_grid(shard: Shard, geometry: dict | None, ranges: dict, arch: ClipArch) -> None:
    want = f"{arch.grid}×{arch.grid} patches of {arch.patch_size} px (model {arch.name} at image_size {arch.image_size})"
    if geometry is None or "image_size" not in geometry:
        raise TrainDataError(f"data.path: {shard.rel} has no djray.geometry footer record: its patch indices cannot "
                             "be mapped to pixels (not djray governed output with a vision section?)")
    got = {c: r for c, r in ranges.items()}
    gh, gw, ps = got.get(S.GRID_H), got.get(S.GRID_W), got.get(S.PATCH_SIZE)
    if any(r is None or r[0] != r[1] for r in (gh, gw, ps)):
        raise TrainDataError(f"data.path: {shard.rel} has null or mixed grid_h/grid_w/patch_size values")
    if (gh[0], gw[0], ps[0], geometry["image_size"]) != (arch.grid, arch.grid, arch.patch_size, arch.image_size):
        raise TrainDataError(
            f"grid mismatch: {shard.rel} was scored on a {gh[0]}×{gw[0]} grid of {ps[0]} px patches at image_size "
            f"{geometry['image_size']}, the model needs {want}: set model.image_size: {geometry['image_size']} "
            f"(with a matching patch size) or govern with vision.image_size: {arch.image_size}")


# ---- the per-worker row stream --------------------------------------------------------------------------------------
@dataclass
class StreamState:
    epoch: int = 0
    unit: int = 0  # position in this epoch's row-group order
    row: int = 0  # position in that row group's row order

    def as_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "unit": self.unit, "row": self.row}


class RowStream:
    """Endless, deterministic stream over one worker's share: seeded row-group order per epoch, seeded row order in
    each row group. `state` is the position of the next row."""

    def __init__(self, fs: pafs.FileSystem, shards: list[Shard], columns: list[str], *, seed: int, rank: int,
                 shuffle: bool = True, state: dict | None = None):
        self.fs, self.columns, self.seed, self.rank, self.shuffle = fs, columns, seed, rank, shuffle
        self.units = [(s, g, n) for s in shards for g, n in enumerate(s.row_groups) if n > 0]
        self.state = StreamState(**(state or {}))
        self._order_key: tuple[int, ...] | None = None
        self._order: np.ndarray = np.arange(0)
        self._cached: tuple[int, int, dict[str, list], np.ndarray] | None = None  # (epoch, unit id, cols, row order)

    def _rng(self, *parts: int) -> np.random.Generator:
        return np.random.default_rng([int(self.seed) & 0xFFFFFFFF, self.rank, *parts])

    def _unit_order(self, *parts: int) -> np.ndarray:
        """The seeded order of the row groups for one pass (`parts`: the epoch; the sampler adds its sweep)."""
        if self._order_key != parts:
            n = len(self.units)
            self._order = self._rng(*parts, 1 << 20).permutation(n) if self.shuffle else np.arange(n)
            self._order_key = parts
        return self._order

    def _read_unit(self, uid: int) -> dict[str, list]:
        shard, group, _ = self.units[uid]
        with open_sequential(self.fs, shard.path) as f:  # few large reads, resumed after a transient failure
            table = pq.ParquetFile(f, pre_buffer=True).read_row_group(group, columns=self.columns)
        return {c: table.column(c).to_pylist() for c in self.columns}

    def _load(self, epoch: int, uid: int):
        if self._cached is not None and self._cached[:2] == (epoch, uid):
            return self._cached[2], self._cached[3]
        cols, nrows = self._read_unit(uid), self.units[uid][2]
        order = self._rng(epoch, uid).permutation(nrows) if self.shuffle else np.arange(nrows)
        self._cached = (epoch, uid, cols, order)
        return cols, order

    def take(self, n: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """The next n usable rows (rows without image or caption are skipped) and the state after them."""
        rows: list[dict[str, Any]] = []
        st = self.state
        while len(rows) < n:
            order = self._unit_order(st.epoch)
            if st.unit >= len(order):
                st.epoch, st.unit, st.row = st.epoch + 1, 0, 0
                continue
            uid = int(order[st.unit])
            cols, row_order = self._load(st.epoch, uid)
            if st.row >= len(row_order):
                st.unit, st.row = st.unit + 1, 0
                continue
            i = int(row_order[st.row])
            st.row += 1
            row = {c: cols[c][i] for c in self.columns}
            if row.get(S.IMAGE) is None or row.get(S.CAPTION) is None:
                continue
            row["_epoch"] = st.epoch
            rows.append(row)
        return rows, st.as_dict()


def open_stream(cfg: TrainConfig, plan: DataPlan, rank: int, world: int, state: dict | None = None) -> RowStream:
    fs, _ = resolve(plan.uri, plan.storage)
    cols = [c for c in (S.KEY, S.IMAGE, S.CAPTION, S.PATCH_IDX, S.PATCH_SCORES) if c in plan.columns]
    if cfg.patches.mode == "full":
        cols = [S.KEY, S.IMAGE, S.CAPTION]
    elif cfg.patches.mode == "rescore":
        cols = [S.KEY, S.IMAGE, S.CAPTION, S.PATCH_SCORES]
    if cfg.data.sampler != "none":
        from djray.train.sampler import GainRowStream

        return GainRowStream(fs, plan.share(rank, world), cols, seed=cfg.data.seed, rank=rank,
                             sampler=cfg.data.sampler, shuffle=cfg.data.shuffle, state=state)
    return RowStream(fs, plan.share(rank, world), cols, seed=cfg.data.seed, rank=rank, shuffle=cfg.data.shuffle,
                     state=state)
