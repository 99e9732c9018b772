"""One governance run, phase by phase:

    preflight  every check before any data is read                                       (djray/preflight.py)
    phase A    read → decode → vision → signals/<shard>.parquet, one pass over the pixels  (runtime/stream.py)
               skipped for shards already sealed under the signals fingerprint, and with `signals.from`
    phase B    the selection steps over the signals store → per-shard decisions          (runtime/select.py)
               (vas reference images are embedded first, once, by a phase A of their own: runtime/reference.py)
               each finished step is kept under the selection fingerprint
    phase C    kept rows → text ops → patches; then per shard: signals + decisions + the source's bytes →
               data/ + rejects/                                                          (runtime/write.py)
               for shards not yet written under the output fingerprint
    manifest   counts, fingerprints, models, the selection funnel                        (runtime/manifest.py)

Re-running the same command after any crash resumes: every phase skips what its markers say is complete.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from djray.config import JobConfig
from djray.io import fs as iofs
from djray.preflight import Plan, prepare
from djray.runtime.cluster import JobError, attached_to_cluster, cluster_cpus, ensure_ray, root_cause
from djray.runtime.layout import Layout
from djray.runtime.ledger import Ledger
from djray.runtime.manifest import build_manifest
from djray.runtime.reference import bind_references
from djray.runtime.resources import live_cluster, resolve_phases
from djray.runtime.select import bytes_per_row, run_selection
from djray.runtime.stream import run_kept_ops, run_phase_a
from djray.runtime.write import run_final_write

__all__ = ["run", "prepare", "Plan", "JobError"]


def run(cfg: JobConfig, *, progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the job; return the manifest. Raises ConfigError before work, JobError after."""
    plan = prepare(cfg)
    started = time.time()
    ensure_ray(cfg)
    for line in resolve_phases([plan.ops, plan.kept_ops], live_cluster(attached_to_cluster(cfg))):
        log(f"[resources] {line}")
    _claim_output(plan)
    clock = PhaseClock()
    rows = 0
    steps: list[dict[str, Any]] = []
    done: dict[str, dict[str, Any]] = {}
    error = None
    try:
        with clock("stream_s"):
            rows = _phase_a(plan, progress)
        with clock("select_s"):
            steps = _phase_b(plan, log, progress)
        with clock("write_s"):
            done = _phase_c(plan, progress, clock)
    except (ray.exceptions.RayError, OSError, RuntimeError) as e:
        error = root_cause(e)
    manifest = _manifest(plan, started, rows, clock.seconds, steps, done, error)
    if error:
        raise JobError(f"{error} (completed shards are kept: fix the cause, then re-run the same command to resume)")
    if not manifest["accounting_ok"]:
        raise JobError("accounting check failed: rows_in != rows_kept + rows_rejected (see manifest.json)")
    return manifest


def _claim_output(plan: Plan) -> None:
    fs, layout = plan.out_fs, plan.layout
    if plan.cfg.output.mode == "overwrite":
        for name in ("data", "rejects", "signals", "_djray"):
            iofs.delete_dir(fs, f"{layout.root}/{name}")
        iofs.delete_file(fs, layout.manifest)
    iofs.write_json(fs, layout.job, plan.job_record())


def _phase_a(plan: Plan, progress: bool) -> int:
    if plan.signals_from_elsewhere:
        return 0  # preflight checked that every shard is sealed there
    sealed = Ledger(plan.out_fs, plan.layout.sealed_dir(plan.fps.signals)).listing()
    todo = [s for s in plan.shards if s not in sealed]
    return run_phase_a(plan, todo, progress) if todo else 0


def _phase_b(plan: Plan, log: Callable[[str], None], progress: bool = False) -> list[dict[str, Any]]:
    ctx = plan.selection_context()
    fs, layout = ctx.sig()
    params = plan.cfg.steps()
    bind_references(plan, params, log, progress)
    return run_selection(ctx, params, lambda: _rows_in_signals(fs, layout, plan.shards),
                         lambda: bytes_per_row(fs, layout.signals(plan.shards[0])), cluster_cpus(), log,
                         attached=attached_to_cluster(plan.cfg), rows_per_block=plan.cfg.input.rows_per_block)


def _rows_in_signals(fs: pafs.FileSystem, layout: Layout, shards: list[str]) -> int:
    """Rows of the signals store, from the files' footers (a few KB each, read in parallel)."""
    with ThreadPoolExecutor(16) as pool:
        return sum(pool.map(lambda s: _footer_rows(fs, layout.signals(s)), shards))


def _footer_rows(fs: pafs.FileSystem, path: str) -> int:
    with iofs.open_sequential(fs, path) as f:
        return pq.ParquetFile(f).metadata.num_rows


def _phase_c(plan: Plan, progress: bool, clock: PhaseClock) -> dict[str, dict[str, Any]]:
    fs, layout = plan.out_fs, plan.layout
    written = Ledger(fs, layout.done_dir(plan.fps.output)).listing()
    pending = [s for s in plan.shards if s not in written]
    if pending and plan.kept_ops:
        patched = Ledger(fs, layout.patched_dir(plan.fps.output)).listing()
        todo = [s for s in pending if s not in patched]
        if todo:
            with clock("text_s"):
                run_kept_ops(plan, todo, progress)
    return run_final_write(plan, pending, progress) if pending else {}


def _manifest(plan: Plan, started: float, rows: int, phases: dict[str, float], steps: list[dict[str, Any]],
              done_now: dict[str, dict[str, Any]], error: str | None) -> dict[str, Any]:
    fs, layout = plan.out_fs, plan.layout
    done_ledger = Ledger(fs, layout.done_dir(plan.fps.output))
    listed = done_ledger.listing()  # one listing, not one per shard
    earlier = done_ledger.read_many([s for s in plan.shards if s not in done_now and s in listed])
    records = [done_now.get(s) or earlier.get(s) or {"shard": s, "status": "pending"} for s in plan.shards]
    sig_fs, sig_layout = plan.selection_context().sig()  # phase A's models: recorded where the signals were made
    models = {}
    for ops, (where_fs, where) in ((plan.ops, (sig_fs, sig_layout)), (plan.kept_ops, (fs, layout))):
        for op in ops:
            if op.stateful:
                models[op.stage] = iofs.read_json(where_fs, where.model_record(op.name)) or {"op": op.name}
    complete = error is None and all(r["status"] == "done" for r in records)
    manifest = build_manifest(
        config=plan.cfg.model_dump(mode="json", by_alias=True), config_sha256=plan.fps.output, shards=records,
        models=models, status="complete" if complete else "incomplete", started_at=started,
        finished_at=time.time(), rows_this_run=rows, phases=phases, error=error,
        fingerprints=plan.fps.as_dict(), selection=steps, signals_from=plan.signals_uri)
    iofs.write_json(fs, layout.manifest, manifest)
    if complete:
        _clean_up(plan)
    return manifest


def _clean_up(plan: Plan) -> None:
    """Drop bookkeeping no later run of this output can use: staging, other fingerprints' selections and outputs."""
    fs, state = plan.out_fs, plan.layout.state
    iofs.delete_dir(fs, f"{state}/staging")
    steps = {s.name for s in plan.selection_context().steps}
    keep = {"select": steps | {f"{name}.json" for name in steps}, "out": {plan.fps.output[:16]},
            "done": {plan.fps.output[:16]}, "sealed": {plan.fps.signals[:16]}}
    for kind, current in keep.items():
        for info in iofs.file_info(fs, pafs.FileSelector(f"{state}/{kind}", allow_not_found=True)):
            if info.base_name not in current:
                delete = iofs.delete_dir if info.type == pafs.FileType.Directory else iofs.delete_file
                delete(fs, info.path)


class PhaseClock:
    """Wall seconds per phase of one run (`with clock("write_s"): ...`), for the manifest."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.monotonic() - t0


def describe(plan: Plan) -> str:
    import json

    return json.dumps({"shards": len(plan.shards), "input": plan.input_root_uri, "output": plan.layout.root,
                       "stages": plan.cfg.stages(), **plan.fps.as_dict()}, indent=2)
