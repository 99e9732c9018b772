"""Phase C, the final write of one shard: signals + every step's decisions + the source's bytes → data/ + rejects/.

The signals store holds no image bytes, so the source shard is read again (once, front to back) for `image` and
`src_json`; every row must match its signals row (same key, and sha256 of the image bytes equal to `img_sha256`), or
the task fails: a source that changed since its signals were computed is never mixed into the output. `patch_idx`
is chosen here from the stored `patch_scores` with the selection's ratio/strategy/seed, so another ratio needs no
model. Column patches from the ops that saw kept rows only (the text branch) are applied by src_index; a row an
infogrowth recaption rescued takes its recaption as caption.

Files are written atomically under deterministic names, then the shard's done marker (under the output
fingerprint); a re-run rewrites the same names.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from djray import schema as S
from djray.io import fs as iofs
from djray.io.source import ReadSpec, read_shard
from djray.io.writer import AccountingError, apply_patches, evidence_histogram, project
from djray.patches import select_patches
from djray.runtime.decisions import SelectionContext, read_decisions
from djray.runtime.ledger import Ledger
from djray.runtime.recaption_store import read_recaptions
from djray.runtime.signals import read_signals


class SourceChangedError(RuntimeError):
    """An input shard no longer matches the signals computed from it."""


@dataclass(frozen=True)
class PatchSelection:
    ratio: float
    strategy: str
    seed: int
    strata: int
    mix_alpha: float


@dataclass(frozen=True)
class FinalizeSpec:
    """Everything a final-write task needs; picklable."""

    ctx: SelectionContext
    read: ReadSpec
    output_sha: str
    patches: PatchSelection | None  # None without a vision branch
    published: tuple[str, ...]
    clip: bool  # a clip section: signals carry the clip columns, data rows clip_score
    footer: dict[bytes, bytes]
    compression: str
    text: bool


def finalize_shards(spec: FinalizeSpec, orders: list[int]) -> list[dict[str, Any]]:
    """Body of a final-write Ray task: each shard's files and done marker; returns their counts."""
    return [finalize_shard(spec, o) for o in orders]


def finalize_shard(spec: FinalizeSpec, order: int) -> dict[str, Any]:
    ctx = spec.ctx
    src_shard = ctx.shards[order]
    sig_fs, sig_layout = ctx.sig()
    fs, layout = ctx.out()
    signals = read_signals(sig_fs, sig_layout.signals(src_shard))
    table = _with_source(signals, src_shard, order, spec.read)
    table, published = _apply_decisions(table, ctx, src_shard, spec.published)
    alive = pc.is_null(table.column(S.REASON))
    if spec.patches is not None:
        table = _set(table, S.PATCH_IDX, _patch_idx(table, alive, spec.patches))
    if spec.text:
        patches = [iofs.read_parquet(fs, f)
                   for f in iofs.list_files(fs, layout.patch_dir(spec.output_sha, src_shard), ".parquet")]
        table = apply_patches(table, patches, src_shard)
    table = _apply_recaptions(table, ctx, src_shard)
    vision = spec.patches is not None
    data = project(table.filter(alive), S.data_schema(vision, spec.published, spec.clip), spec.footer)
    rejects = project(table.filter(pc.invert(alive)), S.rejects_schema(vision, spec.published, spec.clip),
                      spec.footer)
    counts = _counts(layout, src_shard, table, data, rejects, spec.output_sha)
    iofs.write_table_atomic(fs, layout.data(src_shard), data, spec.compression, uncompressed=(S.IMAGE,))
    iofs.write_table_atomic(fs, layout.rejects(src_shard), rejects, spec.compression, uncompressed=(S.IMAGE,))
    if published or ctx.signals_uri != ctx.output_uri or _has_foreign_selection(signals, ctx.selection_sha):
        # phase A's columns as they were (its reject triple, not the sieves'), plus this selection's published ones
        for name in spec.published:
            signals = _set(signals, name, table.column(name))
        schema = S.signals_schema(vision, spec.published, spec.clip).with_metadata(
            {**(signals.schema.metadata or {}), S.META_SELECTION_SHA256: ctx.selection_sha.encode()})
        iofs.write_table_atomic(fs, layout.signals(src_shard), project(signals, schema, schema.metadata), "zstd")
    Ledger(fs, layout.done_dir(spec.output_sha)).write(src_shard, counts)
    return counts


def _with_source(signals: pa.Table, src_shard: str, order: int, read: ReadSpec) -> pa.Table:
    """Signals rows + `image` and `src_json` from one sequential read of the source shard, checked row by row."""
    blocks = [b.select([S.SRC_INDEX, S.KEY, S.IMAGE, S.SRC_JSON]) for b in read_shard(src_shard, order, read)]
    source = pa.concat_tables(blocks) if blocks else pa.table({S.SRC_INDEX: pa.array([], pa.int64())})
    source = source.filter(pc.not_equal(source.column(S.SRC_INDEX), -1)).sort_by([(S.SRC_INDEX, "ascending")])
    if source.num_rows != signals.num_rows or not source.column(S.SRC_INDEX).equals(signals.column(S.SRC_INDEX)):
        raise SourceChangedError(f"input shard {src_shard} now reads as {source.num_rows} rows, its signals hold "
                                 f"{signals.num_rows}: the source changed since phase A (re-run with overwrite)")
    same_key = pc.fill_null(pc.equal(source.column(S.KEY), signals.column(S.KEY)), False)
    both_null = pc.and_(source.column(S.KEY).is_null(), signals.column(S.KEY).is_null())
    if not pc.all(pc.or_(same_key, both_null)).as_py():
        raise SourceChangedError(f"input shard {src_shard}: keys differ from its signals: the source changed since "
                                 "phase A (re-run with overwrite)")
    images = source.column(S.IMAGE).to_pylist()
    for i, (image, digest) in enumerate(zip(images, signals.column(S.IMG_SHA256).to_pylist())):
        if digest is not None and (image is None or hashlib.sha256(image).hexdigest() != digest):
            raise SourceChangedError(f"input shard {src_shard}: the image of row {i} is not the one its signals were "
                                     "computed from (re-run with overwrite)")
    return signals.append_column(S.IMAGE, source.column(S.IMAGE)).append_column(S.SRC_JSON, source.column(S.SRC_JSON))


def _apply_decisions(table: pa.Table, ctx: SelectionContext, src_shard: str,
                     published: tuple[str, ...]) -> tuple[pa.Table, bool]:
    """Reject rows dropped by a step (the first step that dropped a row names it) and attach published columns."""
    index = table.column(S.SRC_INDEX)
    any_published = False
    for step in ctx.steps:
        decided = read_decisions(ctx, step, src_shard)
        if decided is None:
            continue
        pos = pc.index_in(index, value_set=decided.column(S.SRC_INDEX))
        for name in step.writes:
            any_published = True
            table = _set(table, name, decided.column(name).take(pos))
        dropped = decided.filter(pc.is_valid(decided.column(S.REASON)))
        if dropped.num_rows:
            at = pc.index_in(index, value_set=dropped.column(S.SRC_INDEX))
            newly = pc.and_(at.is_valid(), pc.is_null(table.column(S.REASON)))
            for col, value in ((S.STAGE, pa.scalar(step.stage)), (S.REASON, dropped.column(S.REASON).take(at)),
                               (S.DETAIL, dropped.column(S.DETAIL).take(at))):
                table = _set(table, col, pc.if_else(newly, value, table.column(col)))
    for name in published:
        if name not in table.column_names:
            table = _set(table, name, pa.nulls(table.num_rows, S.PUBLISHED_FIELDS[name]))
    return table, any_published


def _apply_recaptions(table: pa.Table, ctx: SelectionContext, src_shard: str) -> pa.Table:
    """A kept row an infogrowth recaption rescued: `caption` = its recaption, `caption_source` = rewrite (the text
    branch skipped it: djray.runtime.kept), `caption_raw` unchanged."""
    fs, layout = ctx.out()
    alive = pc.is_null(table.column(S.REASON))
    for step in ctx.steps:
        if not step.recaption:
            continue
        t = read_recaptions(fs, layout, step.name, src_shard, [S.RECAPTION, S.RECAPTION_SCORE])
        t = t.filter(pc.is_valid(t.column(S.RECAPTION_SCORE)))
        if not t.num_rows:
            continue
        at = pc.index_in(table.column(S.SRC_INDEX), value_set=t.column(S.SRC_INDEX))
        rescued = pc.and_(alive, at.is_valid())
        for name, value in ((S.CAPTION, t.column(S.RECAPTION).take(at)), (S.CAPTION_SOURCE, pa.scalar("rewrite")),
                            (S.TEXT_FALLBACK_REASON, pa.scalar(None, pa.string()))):
            if name == S.TEXT_FALLBACK_REASON and name not in table.column_names:
                continue
            old = table.column(name) if name in table.column_names else pa.nulls(table.num_rows, pa.string())
            table = _set(table, name, pc.if_else(rescued, value, old))
    return table


def _patch_idx(table: pa.Table, alive: pa.ChunkedArray, p: PatchSelection) -> pa.Array:
    scores = table.column(S.PATCH_SCORES).to_pylist()
    keys = table.column(S.KEY).to_pylist()
    out: list[Any] = [None] * table.num_rows
    for i in np.flatnonzero(alive.to_numpy(zero_copy_only=False)):
        if scores[i] is not None:
            out[i] = select_patches(np.asarray(scores[i], np.float32), p.ratio, p.strategy, p.seed, keys[i],
                                    p.strata, p.mix_alpha).tolist()
    return pa.array(out, S.PATCH_IDX_FIELD.type)


def _counts(layout, src_shard: str, table: pa.Table, data: pa.Table, rejects: pa.Table,
            output_sha: str) -> dict[str, Any]:
    rows_in = table.num_rows
    if data.num_rows + rejects.num_rows != rows_in:
        raise AccountingError(f"shard {src_shard}: rows_in {rows_in} != kept {data.num_rows} + rejected "
                              f"{rejects.num_rows}")
    counts = {
        "shard": src_shard,
        "status": "done",
        "output_sha256": output_sha,
        "rows_in": rows_in,
        "rows_kept": data.num_rows,
        "rows_rejected": rejects.num_rows,
        "rejected_by_reason": dict(sorted(Counter(rejects.column(S.REASON).to_pylist()).items())),
        "rejected_by_stage": dict(sorted(Counter(rejects.column(S.STAGE).to_pylist()).items())),
        "data_file": posixpath.relpath(layout.data(src_shard), layout.root),
        "rejects_file": posixpath.relpath(layout.rejects(src_shard), layout.root),
        "caption_source": dict(sorted(Counter(data.column(S.CAPTION_SOURCE).to_pylist()).items())),
    }
    if S.TEXT_FALLBACK_REASON in table.column_names:
        alive = table.filter(pc.is_null(table.column(S.REASON)))
        counts["text_fallback_by_reason"] = dict(sorted(Counter(
            alive.column(S.TEXT_FALLBACK_REASON).drop_null().to_pylist()).items()))
    if S.VIS_EVIDENCE in data.column_names:
        counts["evidence_per_image"] = evidence_histogram(data)
    return counts


def _has_foreign_selection(signals: pa.Table, selection_sha: str) -> bool:
    meta = signals.schema.metadata or {}
    return S.META_SELECTION_SHA256 in meta and meta[S.META_SELECTION_SHA256] != selection_sha.encode()


def _set(table: pa.Table, name: str, values) -> pa.Table:
    i = table.schema.get_field_index(name)
    return table.set_column(i, name, values) if i >= 0 else table.append_column(name, values)
