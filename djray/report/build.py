"""Assemble the report of one output: manifest tables, streamed statistics, plots, samples and reject examples."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from djray import schema as S
from djray.io import fs as iofs
from djray.geometry import DEFAULT_MAX_PIXELS
from djray.report import pictures as P
from djray.report import render as R
from djray.report.samples import kept_samples, reject_examples
from djray.report.source import Output
from djray.report.stats import Stats, cluster_sizes, collect
from djray.runtime.manifest import random_weights

SHARD_ROWS_SHOWN = 100  # per-shard table: unfinished shards first, then the first ones, up to this many
SECTIONS = ("totals", "funnel", "distributions", "evidence", "samples", "rejects", "models", "shards", "timings")


def default_html_path(output_uri: str) -> str:
    return iofs.join(output_uri.rstrip("/"), "report.html")


def write_report(output_uri: str, html_path: str | None = None, samples: int = 16, per_reason: int = 2,
                 storage: iofs.Storage | None = None, log: Any = None, stat_files: int | None = None) -> str:
    """Write the report of `output_uri` to `html_path` (default OUTPUT/report.html; local or s3://); return it.
    `stat_files`: compute the histograms from that many files per kind, spread evenly (default: every file)."""
    storage = storage or iofs.Storage()
    started = time.time()
    html = render_report(Output(output_uri, storage, stat_files), samples, per_reason)
    target = html_path or default_html_path(output_uri)
    fs, path = iofs.resolve(target, storage)
    iofs.write_bytes_atomic(fs, path, html.encode("utf-8"))
    if log:
        log(f"report: {target} ({len(html) / 1e6:.1f} MB, {time.time() - started:.1f}s)")
    return target


def render_report(out: Output, samples: int = 16, per_reason: int = 2) -> str:
    m = out.manifest
    stats = collect(out)
    sections = [
        ("totals", "Totals and accounting", _totals(m)),
        ("funnel", "Selection funnel", _funnel(m)),
        ("distributions", "Distributions", _coverage(out) + _distributions(stats)),
        ("evidence", "Evidence classes", _evidence(stats)),
        ("samples", "Samples: images, kept patches, governed captions", _samples(out, samples)),
        ("rejects", "Reject and sieve examples", _rejects(out, per_reason)),
        ("models", "Models", _models(m)),
        ("shards", "Shards", _shards(m)),
        ("timings", "Timings", _timings(m)),
    ]
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    head = (f'<p class="meta">{R.escape(out.uri)} · status {R.escape(str(m.get("status")))} · djray '
            f'{R.escape(str(m.get("djray_version")))} · schema {m.get("schema_version")} · config '
            f'{R.escape(str(m.get("config_sha256", ""))[:12])} · report written {now}</p>')
    sections[0] = (sections[0][0], sections[0][1], head + sections[0][2])
    return R.page("djray governance report", sections)


def _totals(m: dict[str, Any]) -> str:
    ok = m.get("accounting_ok")
    check = (f'<p class="{"ok" if ok else "bad"}">rows in {m["rows_in"]:,} = kept {m["rows_kept"]:,} + rejected '
             f'{m["rows_rejected"]:,}: {"holds" if ok else "DOES NOT HOLD"}</p>')
    rows = [["rows in", m["rows_in"]], ["rows kept", m["rows_kept"]], ["rows rejected", m["rows_rejected"]],
            ["shards done", f'{m.get("shards_done")} / {m.get("shards_total")}']]
    parts = [check, R.table(["", "count"], rows, {1})]
    by_stage = sorted(m.get("rejected_by_stage", {}).items(), key=lambda kv: -kv[1])
    by_reason = sorted(m.get("rejected_by_reason", {}).items(), key=lambda kv: -kv[1])
    parts.append("<h3>Rejects by stage</h3>" + (R.table(["stage", "rows"], [list(kv) for kv in by_stage], {1})
                                                if by_stage else R.muted("no rejected rows")))
    parts.append("<h3>Rejects by reason</h3>" + (R.table(["reason", "rows"], [list(kv) for kv in by_reason], {1})
                                                 if by_reason else R.muted("no rejected rows")))
    sources = m.get("caption_source") or {}
    if sources:
        parts.append("<h3>Caption sources (kept rows)</h3>"
                     + R.table(["caption_source", "rows"], [list(kv) for kv in sources.items()], {1}))
    if m.get("error"):
        parts.append(f'<p class="bad">error: {R.escape(str(m["error"]))}</p>')
    return "\n".join(parts)


def funnel_stages(m: dict[str, Any]) -> list[tuple[str, int]]:
    """(step, rows left after it): input, phase A (read/decode/vision/clip rejects), each selection step, text."""
    by_stage = m.get("rejected_by_stage", {})
    left = m["rows_in"]
    stages = [("input", left)]
    left -= sum(n for s, n in by_stage.items() if not s.startswith("sieve:") and s != "text")
    stages.append(("phase A (read, decode, models)", left))
    for step in m.get("selection", []):
        if step.get("dropped"):
            left -= step["dropped"]
            stages.append((f"sieve:{step['op']}", left))
    if by_stage.get("text"):
        left -= by_stage["text"]
        stages.append(("text", left))
    return stages


def _funnel(m: dict[str, Any]) -> str:
    steps = m.get("selection", [])
    if not steps:
        return R.muted("no selection steps in this output") + R.figure(P.funnel_plot(funnel_stages(m)), "funnel")
    rows = [[s.get("op"), s.get("rows_in"), s.get("dropped"), s.get("kept"),
             ", ".join(f"{k}={v}" for k, v in (s.get("describe") or {}).items() if v is not None)] for s in steps]
    return (R.figure(P.funnel_plot(funnel_stages(m)), "selection funnel")
            + R.table(["step (in order)", "rows in", "dropped", "kept", "parameters"], rows, {1, 2, 3}))


LABELS = {
    "patch-score entropy (normalised, all scored images)": "H(scores / sum) / log(patches)",
    "clip_score": "cosine(CLIP image, CLIP text)",
}


def _distributions(st: Stats) -> str:
    figs = []
    for name, res in st.floats.items():
        if res.n:
            sampled = f", sample {res.sample.size:,}" if res.n > res.sample.size else ""
            title = f"{name} (n={res.n:,}{sampled}, mean {res.mean:.3f})"
            figs.append(R.figure(P.hist_plot(res.sample, title, LABELS.get(name, name)), title))
    for name, counts in st.ints.items():
        if counts:
            title = f"{name} (n={sum(counts.values()):,})"
            figs.append(R.figure(P.count_plot(counts, title, name), title))
    for name, counts in st.labels.items():
        if name.endswith("cluster_id") and counts:
            title = f"cluster sizes: {name} ({len(counts):,} clusters)"
            figs.append(R.figure(P.sizes_plot(cluster_sizes(counts), title), title))
    if not figs:
        return R.muted("no signal columns to plot in this output")
    return f'<div class="plots">{"".join(figs)}</div>'


def _coverage(out: Output) -> str:
    parts = [f"{len(out.stat_paths(k)):,} of {len(out.files(k)):,} {k} files" for k in ("signals", "data")]
    return R.muted("Statistics over " + " and ".join(parts) + " (counts in the tables above are exact, from the "
                   "manifest).")


def _evidence(st: Stats) -> str:
    counts = st.labels.get("evidence classes")
    if not counts:
        return R.muted("no vision evidence in this output (no vision section, or no class head)")
    top = counts.most_common(20)
    return (f'<div class="plots">{R.figure(P.top_plot(counts, "most frequent evidence classes"), "evidence")}'
            f'{R.table(["class", "images"], [list(kv) for kv in top], {1})}</div>')


def _max_pixels(out: Output) -> int:
    """The run's decode limit (the geometry record's, recorded in the manifest's config): no larger image is shown."""
    decode = (out.manifest.get("config") or {}).get("decode") or {}
    return int(decode.get("max_pixels") or DEFAULT_MAX_PIXELS)


def _picture(row: dict[str, Any], max_pixels: int) -> str | None:
    image = row.get(S.IMAGE)
    if image and row.get(S.PATCH_IDX) is not None and row.get(S.GRID_H) and row.get(S.PATCH_SIZE):
        return P.masked_crop(image, row[S.PATCH_SIZE], row[S.GRID_H], row[S.GRID_W], row[S.PATCH_IDX], max_pixels)
    return P.thumbnail(image, max_pixels)


def _samples(out: Output, n: int) -> str:
    rows = kept_samples(out, n)
    if not rows:
        return R.muted("no kept rows to show" if n else "samples disabled (--samples 0)")
    note = ("Left: the canonical crop the scorer saw; greyed patches are the ones governance dropped. "
            if out.has("data", S.PATCH_IDX) else "No vision columns: the original image. ")
    note += "Caption: words removed in red, added in green."
    limit = _max_pixels(out)
    cards = "".join(R.sample_card(r, _picture(r, limit)) for r in rows)
    return f'<p class="meta">{R.escape(note)}</p><div class="cards">{cards}</div>'


def _rejects(out: Output, per_reason: int) -> str:
    blocks, limit = [], _max_pixels(out)
    for ex in reject_examples(out, per_reason):
        pics = [P.thumbnail(r.get(S.IMAGE), limit) for r in ex.rows]
        twins = [P.thumbnail(t[1].get(S.IMAGE), limit) if t else None for t in ex.twins]
        blocks.append(R.reject_block(ex, pics, twins))
    return "".join(blocks) if blocks else R.muted("no rejected rows")


def _models(m: dict[str, Any]) -> str:
    models = m.get("models") or {}
    if not models:
        return R.muted("no models ran for this output")
    rows, warnings = [], []
    for name, rec in models.items():
        for part, sub in rec.items():
            if isinstance(sub, dict) and any(k.endswith("sha256") for k in sub):
                sha = next((v for k, v in sub.items() if k.endswith("sha256")), "")
                rows.append([name, part, sub.get("model") or sub.get("kind") or "", sub.get("weights", ""),
                             R.Raw(f"<code>{R.escape(str(sha))}</code>")])
        for where in random_weights(rec):
            warnings.append(f"{name} {where} uses RANDOM weights: its outputs are not meaningful")
    for k, v in m.items():
        if k.endswith("_sha256"):
            rows.append(["fingerprint", k, "", "", R.Raw(f"<code>{R.escape(str(v))}</code>")])
    warn = "".join(f'<div class="warn">WARNING: {R.escape(w)}</div>' for w in warnings)
    return warn + R.table(["model", "part", "source", "weights", "sha256"], rows)


def _shards(m: dict[str, Any]) -> str:
    shards = m.get("shards") or []
    first = [s for s in shards if s.get("status") != "done"]
    shown = (first + [s for s in shards if s.get("status") == "done"])[:SHARD_ROWS_SHOWN]
    rows = [[s.get("shard"), s.get("status"), s.get("rows_in", ""), s.get("rows_kept", ""), s.get("rows_rejected", ""),
             ", ".join(f"{k} {v}" for k, v in (s.get("rejected_by_reason") or {}).items())] for s in shown]
    more = R.muted(f"{len(shards) - len(shown):,} more shards not listed (manifest.json has all)") \
        if len(shards) > len(shown) else ""
    return R.table(["shard", "status", "rows in", "kept", "rejected", "rejects by reason"], rows, {2, 3, 4}) + more


def _timings(m: dict[str, Any]) -> str:
    run = m.get("run") or {}
    rows = [[k, v] for k, v in (run.get("phases_s") or {}).items()]
    rows += [["elapsed (this run)", run.get("elapsed_s")], ["rows processed", run.get("rows_processed")],
             ["rows/s", run.get("rows_per_s")]]
    info = R.muted(f"started {run.get('started_at')}, finished {run.get('finished_at')}; python "
                   f"{run.get('python')}, ray {run.get('ray')}, pyarrow {run.get('pyarrow')}")
    return R.table(["phase", "seconds"], rows, {1}) + info
