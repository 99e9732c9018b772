"""The rows the report shows: a few kept samples spread over the data files, and a few examples of every reject
(stage, reason) with, for a deduplicating sieve, the row it kept instead. At most `n` images are read for the
samples and `per_reason` (+ their kept twins) for each reason; finding the examples scans only stage/reason."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from djray import schema as S
from djray.report.source import Output, twin_of

PER_FILE = 4  # kept samples taken from one data file (consecutive rows: one row group read per file)
SHOWN = [S.KEY, S.SRC_SHARD, S.SRC_INDEX, S.IMAGE, S.IMG_WIDTH, S.IMG_HEIGHT, S.CAPTION_RAW, S.CAPTION,
         S.CAPTION_SOURCE, S.PATCH_SIZE, S.GRID_H, S.GRID_W, S.PATCH_IDX, S.VIS_EVIDENCE, S.CLIP_SCORE]


@dataclass
class RejectExamples:
    stage: str
    reason: str
    rows: list[dict[str, Any]] = field(default_factory=list)  # reject rows (stage, reason, detail, SHOWN columns)
    twins: list[tuple[str, dict[str, Any]] | None] = field(default_factory=list)  # the kept row each one duplicates


def kept_samples(out: Output, n: int) -> list[dict[str, Any]]:
    """Up to `n` kept rows: PER_FILE consecutive rows from each of ceil(n / PER_FILE) data files spread evenly."""
    files = out.files("data")
    if n <= 0 or not files:
        return []
    want = min(len(files), -(-n // PER_FILE))
    picks = [files[round(i * (len(files) - 1) / max(want - 1, 1))] for i in range(want)]
    rows: list[dict[str, Any]] = []
    for path in dict.fromkeys(picks):
        rows += out.head(path, SHOWN, min(PER_FILE, n - len(rows))).to_pylist()
        if len(rows) >= n:
            break
    if len(rows) < n:  # few files: take more rows from the first ones
        seen = {(r[S.SRC_SHARD], r[S.SRC_INDEX]) for r in rows}
        for path in files:
            extra = [r for r in out.head(path, SHOWN, n).to_pylist() if (r[S.SRC_SHARD], r[S.SRC_INDEX]) not in seen]
            rows += extra[: n - len(rows)]
            if len(rows) >= n:
                break
    return rows


def reject_examples(out: Output, per_reason: int) -> list[RejectExamples]:
    """`per_reason` example rows for each (stage, reason) in the manifest, in the order stages run."""
    wanted = {r for r, c in out.manifest.get("rejected_by_reason", {}).items() if c}
    found: dict[tuple[str, str], list[tuple[str, int]]] = {}
    if per_reason <= 0 or not wanted:
        return []
    for path in out.files("rejects"):
        for b in out.scan_file(path, [S.STAGE, S.REASON, S.SRC_INDEX]):
            for stage, reason, index in zip(*(b.column(c).to_pylist() for c in (S.STAGE, S.REASON, S.SRC_INDEX))):
                slot = found.setdefault((stage, reason), [])
                if len(slot) < per_reason:
                    slot.append((path, index))
        full = {reason for (_, reason), slot in found.items() if len(slot) >= per_reason}
        if wanted <= full:
            break  # every reason has its examples: the rest of rejects/ is not read
    cols = [S.STAGE, S.REASON, S.DETAIL, *SHOWN]
    out_list = []
    order = ["read", "decode", "vision", "clip", *(f"sieve:{s['op']}" for s in out.manifest.get("selection", [])),
             "text"]
    rank = {stage: i for i, stage in reversed(list(enumerate(order)))}
    for (stage, reason), slots in sorted(found.items(), key=lambda kv: (rank.get(kv[0][0], len(order)), kv[0])):
        ex = RejectExamples(stage, reason)
        for path in dict.fromkeys(p for p, _ in slots):
            ex.rows += out.rows_at(path, cols, [i for p, i in slots if p == path]).to_pylist()
        for row in ex.rows:
            twin = twin_of(row.get(S.DETAIL)) if stage.startswith("sieve:") else None
            ex.twins.append(out.find_row(twin[1], twin[2], SHOWN) if twin else None)
        out_list.append(ex)
    return out_list

