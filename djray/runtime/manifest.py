"""The run manifest (OUTPUT/manifest.json) and the end-of-run summary."""

from __future__ import annotations

import datetime as dt
import platform
from collections import Counter
from typing import Any

import pyarrow as pa
import ray

import djray
from djray import schema as S


def build_manifest(*, config: dict[str, Any], config_sha256: str, shards: list[dict[str, Any]],
                   models: dict[str, Any], status: str, started_at: float, finished_at: float,
                   rows_this_run: int, phases: dict[str, float] | None = None, error: str | None = None,
                   fingerprints: dict[str, str] | None = None, selection: list[dict[str, Any]] | None = None,
                   signals_from: str | None = None) -> dict[str, Any]:
    """Aggregate per-shard records into the manifest and check the accounting identity in total.

    `selection` is the phase-B funnel: one record per step (op, params, rows_in, dropped, kept, ...), in order."""
    done = [s for s in shards if s.get("status") == "done"]
    by_reason: Counter[str] = Counter()
    by_stage: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    fallbacks: Counter[str] = Counter()
    evidence: Counter[str] = Counter()
    for s in done:
        by_reason.update(s.get("rejected_by_reason", {}))
        by_stage.update(s.get("rejected_by_stage", {}))
        sources.update(s.get("caption_source", {}))
        fallbacks.update(s.get("text_fallback_by_reason", {}))
        evidence.update(s.get("evidence_per_image", {}))
    rows_in = sum(s["rows_in"] for s in done)
    kept = sum(s["rows_kept"] for s in done)
    rejected = sum(s["rows_rejected"] for s in done)
    elapsed = max(finished_at - started_at, 1e-9)
    manifest = {
        "schema_version": S.SCHEMA_VERSION,
        "djray_version": djray.__version__,
        "status": status,
        "config": config,
        "config_sha256": config_sha256,
        **(fingerprints or {}),
        "signals_from": signals_from,
        "models": models,
        "rows_in": rows_in,
        "rows_kept": kept,
        "rows_rejected": rejected,
        "rejected_by_reason": dict(sorted(by_reason.items())),
        "rejected_by_stage": dict(sorted(by_stage.items())),
        "selection": selection or [],
        "caption_source": dict(sorted(sources.items())),
        "text_fallback_by_reason": dict(sorted(fallbacks.items())),
        "evidence_per_image": dict(sorted(evidence.items(), key=lambda kv: int(kv[0]))),
        "accounting_ok": rows_in == kept + rejected
        and all(s["rows_in"] == s["rows_kept"] + s["rows_rejected"] for s in done),
        "shards_total": len(shards),
        "shards_done": len(done),
        "shards": shards,
        "run": {
            "started_at": _iso(started_at),
            "finished_at": _iso(finished_at),
            "elapsed_s": round(elapsed, 3),
            "rows_processed": rows_this_run,
            "rows_per_s": round(rows_this_run / elapsed, 2),
            "phases_s": {k: round(v, 3) for k, v in (phases or {}).items()},
            "python": platform.python_version(),
            "ray": ray.__version__,
            "pyarrow": pa.__version__,
        },
    }
    if error:
        manifest["error"] = error
    return manifest


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc).isoformat(timespec="seconds")


def format_summary(manifest: dict[str, Any]) -> str:
    run = manifest["run"]
    lines = [
        f"djray {manifest['djray_version']}: {manifest['status']}"
        f" ({manifest['shards_done']}/{manifest['shards_total']} shards)",
        f"  rows in       {manifest['rows_in']:>12,}",
        f"  rows kept     {manifest['rows_kept']:>12,}",
        f"  rows rejected {manifest['rows_rejected']:>12,}",
    ]
    for reason, count in sorted(manifest["rejected_by_reason"].items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"    {reason:<24}{count:>10,}")
    if manifest.get("text_fallback_by_reason") or set(manifest.get("caption_source", {})) - {"original"}:
        shown = ", ".join(f"{k} {v:,}" for k, v in manifest["caption_source"].items())
        lines.append(f"  captions      {shown}")
        for reason, count in sorted(manifest["text_fallback_by_reason"].items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"    fallback {reason:<15}{count:>10,}")
    head = manifest.get("models", {}).get("vision", {}).get("params", {}).get("head") or {}
    if head.get("kind", "none") != "none" and manifest.get("evidence_per_image"):
        shown = ", ".join(f"{k}: {v:,}" for k, v in manifest["evidence_per_image"].items())
        lines.append(f"  evidence classes per image (ε {head.get('threshold')}, {head.get('prob')})  {shown}")
    steps = [s for s in manifest.get("selection", []) if s.get("dropped")]
    if steps:
        lines.append("  selection     " + ", ".join(f"{s['op']} {s['rows_in']:,} → {s['kept']:,}" for s in steps))
    if run["rows_processed"] or not manifest["rows_in"]:
        lines.append(f"  this run      {run['rows_processed']:>12,} rows in {run['elapsed_s']:.1f}s"
                     f" = {run['rows_per_s']:,.1f} rows/s")
    else:
        lines.append(f"  this run      signals reused (no model ran); selection and output in {run['elapsed_s']:.1f}s")
    for name, model in manifest.get("models", {}).items():
        for where in random_weights(model):
            lines.append(f"  WARNING: {name} {where} uses RANDOM weights: its outputs are not meaningful")
    if manifest.get("error"):
        lines.append(f"  error: {manifest['error']}")
    return "\n".join(lines)


def random_weights(model: dict[str, Any]) -> list[str]:
    """Which parts of a model record (backbone, head) were built with `weights: random`."""
    params = model.get("params", {})
    found = []
    if params.get("weights") == "random":
        found.append(params.get("model", "backbone"))
    head = params.get("head") or {}
    if head.get("kind", "none") != "none" and head.get("weights") == "random":
        found.append(f"head {head['kind']}")
    return found
