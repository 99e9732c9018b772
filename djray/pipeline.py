"""One governance run.

    preflight (validate: config, input shards, column contract, output state)   — before any data is read
    phase A  read → decode → … → stage fragments, streaming, one shard at a time per task   (resumable per shard)
    phase B  global decisions over the staged key/signal columns (duplicate keys; sieves later)
    phase C  per shard: merge fragments + decisions → data/ + rejects/ files                 (resumable per shard)
    manifest

Shard completion is tracked by markers under OUTPUT/_djray (see djray.io.writer), so a re-run of the same command
after any crash skips what is complete and redoes what is not.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
from collections import defaultdict
from dataclasses import dataclass, field
from collections.abc import Iterator
from typing import Any, Callable

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

import djray
from djray import schema as S
from djray.config import ConfigError, JobConfig, config_sha256
from djray.geometry import geometry_metadata
from djray.io import fs as iofs
from djray.io.errors import is_transient, task_args
from djray.io.writer import Layout, finalize_shards_at, footer_metadata
from djray.ops.base import Op
from djray.ops.caption_check import CaptionCheckOp
from djray.ops.decode import DecodeOp, DecodeParams
from djray.runtime import auth
from djray.runtime.dedup import find_duplicate_keys
from djray.runtime.manifest import build_manifest
from djray.runtime.progress import Progress
from djray.runtime.ray_data import KeptShard, ReadSpec, kept_rows_plan, staging_plan


class JobError(RuntimeError):
    """The job could not complete (infrastructure, a failed task). Re-running the same command resumes it."""


@dataclass
class Plan:
    cfg: JobConfig
    config_sha256: str
    storage: iofs.Storage
    input_root_uri: str
    shards: list[str]
    out_fs: pafs.FileSystem
    layout: Layout
    ops: list[Op] = field(default_factory=list)  # phase A: every row streams through these
    kept_ops: list[Op] = field(default_factory=list)  # phase C: only rows still kept after global decisions
    models: dict[str, Any] = field(default_factory=dict)

    @property
    def shards_sha256(self) -> str:
        return hashlib.sha256("\n".join(self.shards).encode()).hexdigest()

    @property
    def vision(self) -> bool:
        return self.cfg.vision is not None

    def footer(self) -> dict[bytes, bytes]:
        geometry = geometry_metadata(self.cfg.vision.image_size) if self.cfg.vision else None
        return footer_metadata(self.config_sha256, djray.__version__, geometry)


# ---- preflight ---------------------------------------------------------------------------------------------------


def prepare(cfg: JobConfig) -> Plan:
    """Every check `run` makes before reading data. Raises ConfigError naming the key at fault."""
    storage = iofs.Storage.of(cfg.storage)
    try:
        root, shards = iofs.list_shards(cfg.input.path, cfg.input.format, storage)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"input.path: {e}") from None
    except OSError as e:
        raise _preflight_error("input.path", f"cannot list {cfg.input.path}", e) from None
    if not shards:
        suffix = "/".join(iofs.SHARD_SUFFIXES[cfg.input.format])
        raise ConfigError(f"input.path: no {suffix} shards found under {cfg.input.path}")
    input_root_uri = f"s3://{root}" if iofs.is_s3(cfg.input.path) else root
    if cfg.input.format == "parquet":
        _check_parquet_columns(cfg, storage, input_root_uri, shards)
    try:
        out_fs, out_root = iofs.resolve(cfg.output.path, storage)
    except ValueError as e:
        raise ConfigError(f"output.path: {e}") from None
    plan = Plan(cfg, config_sha256(cfg), storage, input_root_uri, shards, out_fs, Layout(out_root))
    _check_output(plan)
    for section in (cfg.vision, cfg.text):
        if section is not None:
            try:
                section.validate_sources()
            except ValueError as e:
                raise ConfigError(str(e)) from None
    plan.ops = build_ops(cfg)
    plan.kept_ops = build_kept_ops(cfg)
    return plan


def build_kept_ops(cfg: JobConfig) -> list[Op]:
    """Ops that see only the rows still kept after the global decisions (the LLM never sees a rejected row)."""
    if cfg.text is None or cfg.text.mode == "none":
        return []
    from djray.ops.text.rewrite import TextRewriteOp

    return [TextRewriteOp(cfg.text)]


def build_ops(cfg: JobConfig) -> list[Op]:
    """The streaming stages in order. Rows rejected by a stage are skipped by every later one."""
    d, v = cfg.decode, cfg.vision
    ops: list[Op] = [
        DecodeOp(DecodeParams(max_pixels=d.max_pixels, min_side=d.min_side,
                              image_size=v.image_size if v else None)),
        CaptionCheckOp(d.caption),
    ]
    if v is not None:
        from djray.ops.vision.dino_patch import DinoPatchScorer

        ops.append(DinoPatchScorer(v))
    return ops


def _check_parquet_columns(cfg: JobConfig, storage: iofs.Storage, root_uri: str, shards: list[str],
                           attempts: int = 5) -> None:
    """Check the column contract on the first readable footer. An unreadable shard is not a config error (it becomes
    a `corrupt_shard` reject when read); only when none of the first few footers can be read do we stop here."""
    fs, root = iofs.resolve(root_uri, storage)
    errors = []
    for shard in shards[:attempts]:
        try:
            with iofs.open_sequential(fs, iofs.join(root, shard)) as f:
                names = set(pq.read_schema(f).names)
        except Exception as e:  # noqa: BLE001 - any footer problem counts as unreadable
            if is_transient(e):
                raise _preflight_error("input.path", f"cannot read {shard}", e) from None
            errors.append(f"{shard}: {str(e).splitlines()[0][:200]}")
            continue
        cols = cfg.input.columns
        for key, name in (("key", cols.key), ("image", cols.image), ("caption", cols.caption)):
            if name not in names:
                raise ConfigError(f"input.columns.{key}: column {name!r} not in {shard} (has {sorted(names)})")
        return
    raise ConfigError(f"input.path: cannot read the Parquet schema of the first {len(errors)} shard(s): "
                      + "; ".join(errors))


def _preflight_error(key: str, what: str, e: OSError) -> Exception:
    """A storage failure that outlasted every retry is no config problem: exit 1 (re-run), not 2 (fix the config)."""
    if is_transient(e):
        return JobError(f"{key}: {what}: {e} (a storage failure, not a config problem: re-run the same command)")
    return ConfigError(f"{key}: {what}: {e}")


def _check_output(plan: Plan) -> None:
    cfg, fs, layout = plan.cfg, plan.out_fs, plan.layout
    try:
        job = iofs.read_json(fs, layout.job)
        info = fs.get_file_info(layout.root)
    except OSError as e:
        raise _preflight_error("output.path", f"cannot access {cfg.output.path}", e) from None
    if isinstance(fs, pafs.LocalFileSystem):
        probe = layout.root
        while not os.path.exists(probe):
            probe = os.path.dirname(probe)
        if not os.access(probe, os.W_OK):
            raise ConfigError(f"output.path: {probe} is not writable")
    if cfg.output.mode == "overwrite":
        return
    if job is not None:
        if job.get("config_sha256") != plan.config_sha256:
            raise ConfigError(
                f"output.path: {cfg.output.path} holds a run of a different config "
                f"(config_sha256 {job.get('config_sha256', '?')[:12]}…, this config {plan.config_sha256[:12]}…); "
                "use another output.path or output.mode=overwrite")
        if job.get("shards_sha256") != plan.shards_sha256:
            raise ConfigError(
                f"output.path: {cfg.output.path} was written from a different set of input shards; "
                "use another output.path or output.mode=overwrite")
    elif info.type == pafs.FileType.Directory and fs.get_file_info(pafs.FileSelector(layout.root)):
        raise ConfigError(f"output.path: {cfg.output.path} is not empty and holds no djray run; "
                          "use an empty location or output.mode=overwrite")


# ---- run ---------------------------------------------------------------------------------------------------------


def ensure_ray(cfg: JobConfig) -> None:
    """Attach to `ray.address` / RAY_ADDRESS, or start a local instance (the embedded default)."""
    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "WARNING", "log_to_driver": True}
    if address:
        _check_reachable(address)
        auth.enable_for_driver()  # token authentication: the token from RAY_AUTH_TOKEN(_PATH) or ~/.ray/auth_token
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ray.exceptions.AuthenticationError) as e:
            if auth.is_auth_error(e):
                raise JobError(auth.failure_line(address)) from None
            raise JobError(f"cannot attach to the Ray cluster at {address}: {e}") from None
    else:
        ray.init(num_cpus=cfg.ray.num_cpus, **kwargs)


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a `host:port` GCS address nobody listens on (ray.init would retry for minutes)."""
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():
        return  # "auto", "ray://…" (Ray Client): leave it to ray.init
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as e:
        raise JobError(f"cannot reach the Ray cluster at {address}: {e.strerror or e}") from None


_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Unavailable|Interrupt)): .+")


def root_cause(e: BaseException) -> str:
    """One line naming what went wrong. Ray wraps a task's or an actor constructor's exception in its own error whose
    first line says only which worker died; the original `SomeError: message` is the last such line of its text."""
    text = f"{type(e).__name__}: {e}"
    lines = [line.strip() for line in text.splitlines() if _EXCEPTION_LINE.match(line.strip())]
    return (lines[-1] if lines else text.splitlines()[0])[:800]


def _configure_ray_data() -> None:
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.verbose_stats_logs = False


def _check_cpu_budget(plan: Plan) -> None:
    """Actor pools that hold every CPU of a fixed-size instance starve the read and write tasks: Ray would wait
    forever. Refuse that before starting (an autoscaling cluster can add nodes, so only the local instance)."""
    if plan.cfg.ray.address or os.environ.get("RAY_ADDRESS"):
        return
    cpus = ray.cluster_resources().get("CPU", 0)
    for phase in (plan.ops, plan.kept_ops):
        held = sum(op.resources.pool_size * op.resources.num_cpus for op in phase if op.stateful)
        if held and held > cpus - 0.5:
            section = next(op.stage for op in phase if op.stateful)
            raise ConfigError(f"{section}.resources: actor pools hold {held:g} of the {cpus:g} CPUs of the local "
                              "Ray instance, leaving none for read/write tasks; lower pool_size or num_cpus "
                              "(e.g. num_cpus: 0.5) or give the instance more CPUs (ray.num_cpus)")


def run(cfg: JobConfig, *, progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the job; return the manifest. Raises ConfigError before work, JobError after."""
    plan = prepare(cfg)
    started = time.time()
    ensure_ray(cfg)
    _configure_ray_data()
    _check_cpu_budget(plan)
    fs, layout = plan.out_fs, plan.layout
    if cfg.output.mode == "overwrite":
        for path in (f"{layout.root}/data", f"{layout.root}/rejects", layout.state):
            iofs.delete_dir(fs, path)
        if iofs.exists(fs, layout.manifest):
            fs.delete_file(layout.manifest)
    iofs.write_json(fs, layout.job, {"config_sha256": plan.config_sha256, "shards_sha256": plan.shards_sha256,
                                     "djray_version": djray.__version__})

    staged = {s: m for s in plan.shards if (m := iofs.read_json(fs, layout.staged_marker(s))) is not None}
    done = {s: m for s in plan.shards if (m := iofs.read_json(fs, layout.done_marker(s))) is not None}
    patched = {s: m for s in plan.shards if (m := iofs.read_json(fs, layout.patched_marker(s))) is not None}
    rows_this_run = 0
    error = None
    phases: dict[str, float] = {}
    try:
        todo = [s for s in plan.shards if s not in staged and s not in done]
        if todo:
            t0 = time.monotonic()
            rows_this_run = _stage(plan, todo, staged, progress)
            phases["stream_s"] = time.monotonic() - t0
        pending = [s for s in plan.shards if s not in done]
        if pending:
            t0 = time.monotonic()
            fragments = [f for s in plan.shards if s in staged for f in staged[s]["fragments"]]
            duplicates = find_duplicate_keys(fragments, fs, sum(m["rows_in"] for m in staged.values()),
                                             task_retries=cfg.ray.task_retries)
            phases["dedup_s"] = time.monotonic() - t0
            log(f"[dedup] {sum(map(len, duplicates.values()))} duplicate key(s) across {len(plan.shards)} shards")
            if plan.kept_ops:
                patch_todo = [s for s in pending if s not in patched]
                if patch_todo:
                    t0 = time.monotonic()
                    _patch(plan, patch_todo, staged, duplicates, patched, progress)
                    phases["text_s"] = time.monotonic() - t0
            t0 = time.monotonic()
            _finalize(plan, pending, staged, duplicates, patched if plan.kept_ops else None, done, progress)
            phases["write_s"] = time.monotonic() - t0
    except (ray.exceptions.RayError, OSError, RuntimeError) as e:
        error = root_cause(e)
    records = [done.get(s) or {"shard": s, "status": "staged" if s in staged else "pending"} for s in plan.shards]
    for op in plan.ops + plan.kept_ops:
        if op.stateful:
            plan.models[op.stage] = iofs.read_json(fs, layout.model_record(op.name)) or {"op": op.name}
    complete = error is None and len(done) == len(plan.shards)
    manifest = build_manifest(
        config=cfg.model_dump(mode="json"), config_sha256=plan.config_sha256, shards=records,
        models=plan.models, status="complete" if complete else "incomplete", started_at=started,
        finished_at=time.time(), rows_this_run=rows_this_run, phases=phases, error=error)
    iofs.write_json(fs, layout.manifest, manifest)
    if complete:
        iofs.delete_dir(fs, f"{layout.state}/staging")
        iofs.delete_dir(fs, f"{layout.state}/patches")
    if error:
        raise JobError(f"{error} (completed shards are kept: fix the cause, then re-run the same command to resume)")
    if not manifest["accounting_ok"]:
        raise JobError("accounting check failed: rows_in != rows_kept + rows_rejected (see manifest.json)")
    return manifest


def _collect(ds: ray.data.Dataset, todo: list[str], marker_path: Callable[[str], str], markers: dict[str, Any],
             fs: pafs.FileSystem, bar: Progress) -> int:
    """Consume staging summaries; write a shard's marker once all its rows are durable. Returns rows written."""
    batches = iter(ds.iter_batches(batch_format="pyarrow", batch_size=None))
    try:
        _consume(batches, marker_path, markers, fs, bar)
    finally:
        # Shut the streaming executor down now, also when a stage failed: its actor pools would otherwise hold their
        # CPUs/GPUs until the iterator is garbage-collected, starving the next run in this process.
        batches.close()
    bar.close()
    missing = [s for s in todo if s not in markers]
    if missing:
        raise JobError(f"{len(missing)} shard(s) did not stream completely, e.g. {missing[0]}")
    return bar.rows


def _consume(batches: Iterator[pa.Table], marker_path: Callable[[str], str], markers: dict[str, Any],
             fs: pafs.FileSystem, bar: Progress) -> None:
    acc: dict[str, dict[str, Any]] = defaultdict(lambda: {"fragments": [], "rows": 0, "rows_in": None})
    rows = newly = 0
    for batch in batches:
        for rec in batch.to_pylist():
            a = acc[rec["src_shard"]]
            if rec["fragment"]:
                a["fragments"].append(rec["fragment"])
            a["rows"] += rec["rows"]
            rows += rec["rows"]
            if rec["shard_rows"] is not None:
                a["rows_in"] = rec["shard_rows"]
            if a["rows_in"] is not None and a["rows"] == a["rows_in"]:
                marker = {"shard": rec["src_shard"], "rows_in": a["rows_in"], "fragments": sorted(a["fragments"])}
                iofs.write_json(fs, marker_path(rec["src_shard"]), marker)
                markers[rec["src_shard"]] = marker
                newly += 1
        bar.update(newly, rows)


def _stage(plan: Plan, todo: list[str], staged: dict[str, Any], progress: bool) -> int:
    """Phase A: read → streaming ops → staging fragments, for the shards in `todo`."""
    fs, layout = plan.out_fs, plan.layout
    for s in todo:  # fragments of an interrupted attempt are never referenced by a marker: drop them
        iofs.delete_dir(fs, layout.staging_dir(s))
    order = {s: i for i, s in enumerate(plan.shards)}
    spec = ReadSpec(plan.input_root_uri, plan.cfg.input.format, plan.storage, plan.cfg.input.rows_per_block,
                    plan.cfg.input.columns.key, plan.cfg.input.columns.image, plan.cfg.input.columns.caption,
                    plan.cfg.ray.task_retries)
    ds = staging_plan([(s, order[s]) for s in todo], spec, plan.ops, plan.cfg.output.path, plan.storage)
    return _collect(ds, todo, layout.staged_marker, staged, fs, Progress("govern", len(todo), enabled=progress))


def _patch(plan: Plan, todo: list[str], staged: dict[str, Any], duplicates: dict[str, dict[int, str]],
           patched: dict[str, Any], progress: bool) -> int:
    """Phase C1: ops that see kept rows only (the text branch) → column patches, for the shards in `todo`."""
    fs, layout = plan.out_fs, plan.layout
    for s in todo:
        iofs.delete_dir(fs, layout.patch_dir(s))
    columns = [S.KEY, S.SRC_SHARD, S.SRC_INDEX, S.CAPTION_RAW, S.REJECT_STAGE, S.REJECT_REASON, S.REJECT_DETAIL]
    if plan.vision:
        columns.append(S.VIS_EVIDENCE)
    shards = [KeptShard(s, staged[s], duplicates.get(s, {})) for s in todo]
    ds = kept_rows_plan(shards, plan.kept_ops, plan.cfg.output.path, plan.storage, columns,
                        plan.cfg.input.rows_per_block, plan.cfg.ray.task_retries)
    return _collect(ds, todo, layout.patched_marker, patched, fs, Progress("text", len(todo), enabled=progress))


def finalize_groups(shards: list[str], rows: dict[str, int], min_rows: int) -> list[list[str]]:
    """Consecutive shards packed into groups of at least `min_rows` rows (the last may hold fewer): a job of many
    small shards writes them in a few tasks instead of starting a worker process for every few hundred rows."""
    groups: list[list[str]] = []
    current: list[str] = []
    n = 0
    for s in shards:
        current.append(s)
        n += rows[s]
        if n >= min_rows:
            groups.append(current)
            current, n = [], 0
    if current:
        groups.append(current)
    return groups


def _finalize(plan: Plan, pending: list[str], staged: dict[str, Any], duplicates: dict[str, dict[int, str]],
              patched: dict[str, Any] | None, done: dict[str, Any], progress: bool) -> None:
    """Phase C2: tasks write the final data/ and rejects/ files of one shard (or of a group of small shards); the
    driver marks each shard done when its task returns."""
    task = ray.remote(num_cpus=1, **task_args(plan.cfg.ray.task_retries))(finalize_shards_at)
    footer = plan.footer()
    bar = Progress("write", len(pending), enabled=progress)
    queue = finalize_groups(pending, {s: staged[s]["rows_in"] for s in pending}, plan.cfg.ray.finalize_rows_per_task)
    inflight: dict[Any, list[str]] = {}
    limit = plan.cfg.ray.max_concurrent_finalize
    while queue or inflight:
        while queue and len(inflight) < limit:
            group = queue.pop(0)
            jobs = [(s, staged[s], duplicates.get(s, {}), patched[s] if patched is not None else None) for s in group]
            inflight[task.remote(plan.cfg.output.path, plan.storage, jobs, plan.vision, footer,
                                 plan.cfg.output.compression)] = group
        ready, _ = ray.wait(list(inflight), num_returns=1)
        group = inflight.pop(ready[0])
        for s, counts in zip(group, ray.get(ready[0])):
            iofs.write_json(plan.out_fs, plan.layout.done_marker(s), counts)
            done[s] = counts
        bar.update(len(done) - (len(plan.shards) - len(pending)), sum(c["rows_in"] for c in done.values()))
    bar.close()


def describe(plan: Plan) -> str:
    return json.dumps({"shards": len(plan.shards), "input": plan.input_root_uri, "output": plan.layout.root,
                       "stages": plan.cfg.stages(), "config_sha256": plan.config_sha256}, indent=2)
