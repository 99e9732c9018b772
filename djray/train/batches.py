"""Rows → training batches: canonical crops (a thread pool), tokens trimmed per batch, patch indices with one k per
batch; a background loader keeps the next batches ready and hands out the stream position after each.

* `kept`: the stored `patch_idx`; rows governed with different ratios are cut to the batch minimum k, keeping their
  highest-scoring patches (by `patch_scores`; seeded random without scores).
* `rescore`: `select_patches(patch_scores, patches.ratio, patches.strategy, seed, key)` — the same k for every row.
* A flipped row (`data.hflip`, seeded by (data.seed, epoch, key)) gets the mirrored crop and mirrored indices
  (`flip_patch_index`), chosen on the unflipped scores first.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from djray import schema as S
from djray.geometry import canonical_crop, flip_patch_index, open_image
from djray.patches import rank_desc, sample_rng, select_patches
from djray.train.config import TrainConfig
from djray.train.data import DataPlan, RowStream, TrainDataError


@dataclass
class Batch:
    pixels: np.ndarray  # uint8 (B, S, S, 3), canonical crop (flipped where chosen)
    tokens: np.ndarray  # int64 (B, L), trimmed to the longest caption of the batch
    keep_idx: np.ndarray | None  # int64 (B, k) ascending raster indices, or None (all patches)
    keys: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return int(self.pixels.shape[0])


def flip_chosen(seed: int, epoch: int, key: str, prob: float) -> bool:
    return prob > 0 and sample_rng(seed, f"hflip\x1f{epoch}\x1f{key}").random() < prob


def kept_indices(rows: list[dict], grid: int, has_scores: bool, seed: int) -> list[np.ndarray]:
    """`kept` mode: each row's stored patch_idx cut to the batch minimum k (highest scores kept)."""
    idx = [np.asarray(r[S.PATCH_IDX], dtype=np.int64) for r in rows]
    for r, i in zip(rows, idx):
        if i.size == 0 or i.min() < 0 or i.max() >= grid * grid:
            raise TrainDataError(f"row {r.get(S.KEY)!r}: patch_idx is empty or outside the {grid}×{grid} grid")
    k = min(i.size for i in idx)
    out = []
    for r, i in zip(rows, idx):
        if i.size > k:
            if has_scores and r.get(S.PATCH_SCORES) is not None:
                scores = np.asarray(r[S.PATCH_SCORES], dtype=np.float64)[i]
                i = i[rank_desc(scores)[:k]]
            else:
                i = sample_rng(seed, f"cut\x1f{r.get(S.KEY)}").choice(i, size=k, replace=False)
        out.append(np.sort(i))
    return out


def rescored_indices(rows: list[dict], cfg_patches, grid: int) -> list[np.ndarray]:
    out = []
    for r in rows:
        scores = r[S.PATCH_SCORES]
        if scores is None or len(scores) != grid * grid:
            raise TrainDataError(f"row {r.get(S.KEY)!r}: patch_scores has {0 if scores is None else len(scores)} "
                                 f"values, expected {grid * grid}")
        out.append(select_patches(scores, cfg_patches.ratio, cfg_patches.strategy, seed=cfg_patches.seed,
                                  key=str(r.get(S.KEY)), strata=cfg_patches.strata,
                                  mix_alpha=cfg_patches.mix_alpha).astype(np.int64))
    return out


class BatchBuilder:
    """rows → Batch: canonical crops (threads), tokens, patch indices. Deterministic for given rows."""

    def __init__(self, cfg: TrainConfig, plan: DataPlan, tokenize: Callable[[list[str]], np.ndarray],
                 pool: ThreadPoolExecutor | None = None):
        self.cfg, self.plan, self.tokenize, self.pool = cfg, plan, tokenize, pool

    def _pixels(self, job: tuple[bytes, bool, str]) -> np.ndarray:
        data, flip, key = job
        try:
            crop = canonical_crop(open_image(data, self.plan.max_pixels), self.plan.image_size)
        except Exception as e:  # noqa: BLE001 - governed rows decoded once already; anything else is not governed data
            raise TrainDataError(f"row {key!r}: image cannot be decoded ({e}); is data.path djray governed output?")
        return np.ascontiguousarray(crop[:, ::-1]) if flip else crop

    def __call__(self, rows: list[dict]) -> Batch:
        dc = self.cfg.data
        keys = [str(r.get(S.KEY)) for r in rows]
        flips = [flip_chosen(dc.seed, r["_epoch"], k, dc.hflip) for r, k in zip(rows, keys)]
        jobs = [(r[S.IMAGE], f, k) for r, f, k in zip(rows, flips, keys)]
        crops = list(self.pool.map(self._pixels, jobs)) if self.pool else [self._pixels(j) for j in jobs]
        tokens = trim_tokens(self.tokenize([r[S.CAPTION] for r in rows]))
        keep = None
        mode, grid = self.cfg.patches.mode, self.plan.grid
        if mode != "full":
            if mode == "kept":
                idx = kept_indices(rows, grid, self.plan.has_scores, self.cfg.patches.seed)
            else:
                idx = rescored_indices(rows, self.cfg.patches, grid)
            idx = [np.sort(flip_patch_index(i, grid)) if f else i for i, f in zip(idx, flips)]
            keep = np.stack(idx).astype(np.int64)
        return Batch(np.stack(crops), tokens, keep, keys)


def trim_tokens(tokens: np.ndarray) -> np.ndarray:
    """Cut trailing padding common to the whole batch. Exact for a causal text tower pooled at the end-of-text token
    (the highest token id): no kept position attends to the removed ones."""
    tokens = np.asarray(tokens, dtype=np.int64)
    length = int((tokens.argmax(axis=1) + 1).max()) if tokens.size else 1
    return np.ascontiguousarray(tokens[:, : max(2, length)])


class BatchLoader:
    """Background producer: takes rows from the stream, builds batches in a thread pool, keeps `prefetch` ready.
    `next()` returns (batch, stream state after it): saving that state resumes right after this batch."""

    def __init__(self, stream: RowStream, build: BatchBuilder, micro_batch: int, prefetch: int = 2):
        self.stream, self.build, self.micro_batch = stream, build, micro_batch
        self._q: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="djray-train-data", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                rows, state = self.stream.take(self.micro_batch)
                item = (self.build(rows), state)
                while not self._stop.is_set():
                    try:
                        self._q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._q.put((None, e))

    def next(self) -> tuple[Batch, dict[str, int]]:
        batch, state = self._q.get()
        if batch is None:
            raise state
        return batch, state

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._q.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join(timeout=5)
