"""Patch retention (seed-algorithms.md §2.3): pick k of m patch indices from one image's score map. Pure numpy.

Contract code beside `geometry.py`: governance chooses `patch_idx` with it in phase C (from the stored scores) and the
trainer's `rescore` mode with the same function, so the two never diverge.

* k = max(1, floor(r·m + 0.5)) — round half up, not Python's banker's ``round`` (r=0.5, m=49 → 25, not 24).
* Ranking is by score descending, ties broken by the lower raster index; NaN scores rank last.
* Random choices come from ``np.random.default_rng`` seeded with blake2b(seed, key): the same sample gets the same
  patches in every run, whatever the batch or block it travels in.
* Output: int16 indices, ascending (raster order).

Strategies:
  ``topk``        the k highest scores.
  ``uniform``     k patches uniformly at random, without replacement (FLIP-like).
  ``stratified``  rank by score, cut into S equal-count strata (np.array_split: the first m % S strata hold one more
                  patch), draw k // S at random from each; the k % S remaining picks go one each to the highest-scoring
                  strata first.
  ``mix``         round-half-up(α·k) top-scoring patches, the rest uniformly from the remaining patches.
"""

from __future__ import annotations

import hashlib

import numpy as np

STRATEGIES = ("topk", "uniform", "stratified", "mix")


def num_keep(ratio: float, m: int) -> int:
    """k = max(1, round-half-up(r·m)), capped at m."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    if m < 1:
        raise ValueError("no patches to select from")
    return int(min(m, max(1, int(np.floor(ratio * m + 0.5)))))


def sample_rng(seed: int, key: str) -> np.random.Generator:
    """A generator seeded by a stable hash of (seed, key) — independent of process, batch and block layout."""
    digest = hashlib.blake2b(f"{int(seed)}\x1f{key}".encode(), digest_size=16).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def rank_desc(scores: np.ndarray) -> np.ndarray:
    """Indices by score descending; ties by lower index; NaN last."""
    s = np.asarray(scores, dtype=np.float64)
    s = np.where(np.isnan(s), -np.inf, s)
    return np.lexsort((np.arange(s.size), -s))


def select_patches(scores, ratio: float, strategy: str = "topk", seed: int = 0, key: str = "",
                   strata: int = 4, mix_alpha: float = 0.5) -> np.ndarray:
    scores = np.asarray(scores).reshape(-1)
    m = scores.size
    k = num_keep(ratio, m)
    if strategy == "topk":
        chosen = rank_desc(scores)[:k]
    elif strategy == "uniform":
        chosen = sample_rng(seed, key).choice(m, size=k, replace=False)
    elif strategy == "stratified":
        chosen = _stratified(scores, k, strata, sample_rng(seed, key))
    elif strategy == "mix":
        if not 0.0 <= mix_alpha <= 1.0:
            raise ValueError(f"mix_alpha must be in [0, 1], got {mix_alpha}")
        order = rank_desc(scores)
        n_top = min(k, int(np.floor(mix_alpha * k + 0.5)))
        rest = np.sort(order[n_top:])
        picked = sample_rng(seed, key).choice(rest.size, size=k - n_top, replace=False)
        chosen = np.concatenate([order[:n_top], rest[picked]])
    else:
        raise ValueError(f"unknown strategy {strategy!r} (use one of {', '.join(STRATEGIES)})")
    return np.sort(np.asarray(chosen, dtype=np.int64)).astype(np.int16)


def strata_of(scores, strata: int) -> list[np.ndarray]:
    """The equal-count strata (highest scores first) used by ``stratified``; exposed for tests and reports."""
    n = min(int(strata), np.asarray(scores).size)
    if n < 1:
        raise ValueError(f"strata must be >= 1, got {strata}")
    return np.array_split(rank_desc(scores), n)


def _stratified(scores: np.ndarray, k: int, strata: int, rng: np.random.Generator) -> np.ndarray:
    groups = strata_of(scores, strata)
    n = len(groups)
    quota = np.full(n, k // n, dtype=np.int64)
    quota[: k % n] += 1
    # array_split puts the larger strata first, so the quotas always fit; keep a guard that moves any overflow on.
    sizes = np.array([g.size for g in groups])
    overflow = int(np.maximum(quota - sizes, 0).sum())
    quota = np.minimum(quota, sizes)
    for i in range(n):
        if overflow == 0:
            break
        add = min(overflow, sizes[i] - quota[i])
        quota[i] += add
        overflow -= add
    picks = [g[rng.choice(g.size, size=q, replace=False)] for g, q in zip(groups, quota) if q > 0]
    return np.concatenate(picks)
