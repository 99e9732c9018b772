"""Column statistics streamed over an output in bounded memory: exact counts of small integer and label values,
and for real-valued signals exact count / min / max / mean plus a uniform reservoir sample for the histogram.

Memory is O(reservoir + distinct values) per statistic (labels: the class vocabulary, clusters: k), never O(rows).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from djray import schema as S
from djray.report.source import Output

RESERVOIR = 100_000  # values kept per real-valued statistic for its histogram


class Reservoir:
    """Exact count/min/max/sum and a uniform sample of at most `size` values (Algorithm R, vectorised per batch)."""

    def __init__(self, size: int = RESERVOIR, seed: int = 0):
        self.size, self.n, self.total = size, 0, 0.0
        self.lo, self.hi = np.inf, -np.inf
        self.sample = np.empty(0, np.float64)
        self._rng = np.random.default_rng(seed)

    def add(self, values: np.ndarray) -> None:
        v = np.asarray(values, np.float64)
        v = v[np.isfinite(v)]
        if not v.size:
            return
        self.lo, self.hi = min(self.lo, float(v.min())), max(self.hi, float(v.max()))
        self.total += float(v.sum())
        room = self.size - self.sample.size
        if room > 0:
            self.sample = np.concatenate([self.sample, v[:room]])
        rest, start = v[max(room, 0):], self.n + max(room, 0)
        if rest.size:
            slot = self._rng.integers(0, start + np.arange(rest.size) + 1)
            hit = slot < self.size
            self.sample[slot[hit]] = rest[hit]
        self.n += v.size

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else float("nan")


@dataclass
class Stats:
    """Everything the report plots, filled by `collect`."""

    floats: dict[str, Reservoir] = field(default_factory=dict)  # title → values
    ints: dict[str, Counter] = field(default_factory=dict)  # title → {value: count}
    labels: dict[str, Counter] = field(default_factory=dict)  # title → {label: count}
    rows: dict[str, int] = field(default_factory=dict)  # kind → rows scanned

    def real(self, name: str) -> Reservoir:
        return self.floats.setdefault(name, Reservoir())

    def count(self, name: str, values: np.ndarray) -> None:
        uniq, n = np.unique(np.asarray(values), return_counts=True)
        self.ints.setdefault(name, Counter()).update(dict(zip(uniq.tolist(), n.tolist())))


def entropy(scores: pa.ListArray) -> np.ndarray:
    """Normalised Shannon entropy of each row's patch scores as a distribution (scores / their sum): 1 = uniform
    attention over the grid, 0 = all of it on one patch. Rows with no scores or a non-positive sum are skipped."""
    scores = scores.drop_null() if scores.null_count else scores
    lengths = pc.list_value_length(scores).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = np.clip(pc.list_flatten(scores).to_numpy(zero_copy_only=False).astype(np.float64), 0, None)
    row = np.repeat(np.arange(len(lengths)), lengths)
    total = np.bincount(row, weights=flat, minlength=len(lengths))
    p = np.divide(flat, total[row], out=np.zeros_like(flat), where=total[row] > 0)
    plogp = p * np.log(np.where(p > 0, p, 1.0))
    h = -np.bincount(row, weights=plogp, minlength=len(lengths))
    ok = (lengths > 1) & (total > 0)
    return h[ok] / np.log(lengths[ok])


def _words(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    col = col.drop_null()
    return pc.count_substring_regex(col, r"\S+").to_numpy(zero_copy_only=False)  # words as str.split() sees them


def _cluster_columns(out: Output) -> list[str]:
    return [c for c in out.column_names("signals") if c.endswith("cluster_id")]


def _real_columns(out: Output) -> list[str]:
    """clip_score and every real-valued column a sieve published (cos_to_centroid, *_max_sim, vas, gain, ...)."""
    names = out.column_names("signals")
    schema_types = {c: S.column_type(c) for c in names}
    skip = {S.SRC_INDEX, S.IMG_WIDTH, S.IMG_HEIGHT, S.PATCH_SIZE, S.GRID_H, S.GRID_W}
    return [c for c in names if c not in skip and not c.endswith("cluster_id")
            and (c == S.CLIP_SCORE or c in S.PUBLISHED_FIELDS)
            and (schema_types[c] is None or pa.types.is_floating(schema_types[c]))]


def collect(out: Output, batch_rows: int = 8192) -> Stats:
    """One streamed pass over signals/ (scores, evidence, clusters, published values) and one over data/ (kept
    patches, captions), each reading only the columns it needs."""
    st = Stats()
    clusters, reals = _cluster_columns(out), _real_columns(out)
    sig_cols = [S.PATCH_SCORES, S.VIS_EVIDENCE, *clusters, *reals]
    n = 0
    for b in out.scan("signals", sig_cols, batch_rows):
        n += b.num_rows
        names = b.schema.names
        if S.PATCH_SCORES in names:
            st.real("patch-score entropy (normalised, all scored images)").add(entropy(b.column(S.PATCH_SCORES)))
        if S.VIS_EVIDENCE in names:
            ev = b.column(S.VIS_EVIDENCE).drop_null()
            st.count("evidence classes per image", pc.list_value_length(ev).to_numpy(zero_copy_only=False))
            flat = pc.value_counts(pc.list_flatten(ev))
            st.labels.setdefault("evidence classes", Counter()).update(
                dict(zip(flat.field("values").to_pylist(), flat.field("counts").to_pylist())))
        for c in clusters:
            ids = b.column(c).drop_null().to_numpy(zero_copy_only=False)
            st.labels.setdefault(c, Counter()).update(dict(zip(*np.unique(ids, return_counts=True))))
        for c in reals:
            st.real(c).add(b.column(c).to_numpy(zero_copy_only=False))
    st.rows["signals"] = n
    n = 0
    for b in out.scan("data", [S.PATCH_IDX, S.CAPTION_RAW, S.CAPTION], batch_rows):
        n += b.num_rows
        names = b.schema.names
        if S.PATCH_IDX in names:
            st.count("kept patches per image", pc.list_value_length(b.column(S.PATCH_IDX).drop_null())
                     .to_numpy(zero_copy_only=False))
        if S.CAPTION_RAW in names:
            st.count("caption words before (raw, kept rows)", _words(b.column(S.CAPTION_RAW)))
        if S.CAPTION in names:
            st.count("caption words after (governed)", _words(b.column(S.CAPTION)))
    st.rows["data"] = n
    return st


def cluster_sizes(counter: Counter) -> np.ndarray:
    """Rows per cluster (one value per cluster) from a {cluster_id: rows} counter."""
    return np.array(sorted(counter.values()), np.int64)

