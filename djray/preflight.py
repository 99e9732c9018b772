"""Everything `run` checks before reading any data (`djray validate` runs exactly this): the config, the input
listing and column contract, weights sources, the op chain, the fingerprints, and the state of the output.

Reference images (vas `target.images`) are listed here too: each set becomes a sub-plan, a phase A of its own
(decode → the job's CLIP op) into `<output>/_djray/reference/<its signals sha>/`, run by djray.runtime.reference.

Output states: empty → a fresh run; holds a run with the same signals fingerprint → resume (a changed selection or
text branch re-selects without phase A, and rewrites shard by shard); holds other signals → refused unless
`output.mode: overwrite`; holds anything else → refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

import djray
from djray import schema as S
from djray.config import ConfigError, DecodeConfig, InputConfig, JobConfig, OutputConfig, ParquetColumns
from djray.fingerprint import Fingerprints, fingerprints, step_sha256s
from djray.geometry import geometry_metadata
from djray.io import fs as iofs
from djray.io.errors import is_transient
from djray.io.source import ReadSpec
from djray.io.writer import footer_metadata
from djray.ops.base import Op
from djray.registry import kept_ops, phase_a_ops
from djray.runtime.cluster import JobError
from djray.runtime.decisions import SelectionContext
from djray.runtime.layout import Layout
from djray.runtime.ledger import Ledger
from djray.runtime.select import steps_of


@dataclass
class Plan:
    cfg: JobConfig
    fps: Fingerprints
    storage: iofs.Storage
    input_root_uri: str
    listing: list[tuple[str, int]]
    out_fs: pafs.FileSystem
    layout: Layout
    signals_uri: str  # this output, or `signals.from`
    ops: list[Op] = field(default_factory=list)  # phase A: every row streams through these
    kept_ops: list[Op] = field(default_factory=list)  # phase C: only rows the selection kept
    job: dict[str, Any] | None = None  # the job record found in the output (None: a fresh output)
    references: dict[int, Plan] = field(default_factory=dict)  # step index → plan embedding its reference images

    @property
    def shards(self) -> list[str]:
        return [name for name, _ in self.listing]

    @property
    def config_sha256(self) -> str:
        return self.fps.output

    @property
    def signals_from_elsewhere(self) -> bool:
        return self.cfg.signals.from_ is not None

    def footer(self, signals: bool = False) -> dict[bytes, bytes]:
        """Footer metadata of the output files (`signals=True`: of a sealed signals file, which belongs to no
        particular selection or output)."""
        v = self.cfg.vision
        geometry = geometry_metadata(v.image_size, self.cfg.decode.max_pixels) if v else None
        return footer_metadata(None if signals else self.fps.output, djray.__version__, geometry, self.fps.signals)

    def read_spec(self) -> ReadSpec:
        i = self.cfg.input
        return ReadSpec(self.input_root_uri, i.format, self.storage, i.rows_per_block, i.columns.key, i.columns.image,
                        i.columns.caption, self.cfg.ray.task_retries)

    def selection_context(self) -> SelectionContext:
        return SelectionContext(self.cfg.output.path, self.signals_uri, self.storage, tuple(self.shards),
                                self.fps.selection, steps_of(self.cfg.steps(), step_sha256s(self.cfg, self.fps.signals,
                                                                                            self.reference_shas())),
                                self.cfg.ray.task_retries)

    def reference_shas(self) -> dict[int, str]:
        return {i: ref.fps.signals for i, ref in self.references.items()}

    def job_record(self) -> dict[str, Any]:
        return {**self.fps.as_dict(), "shards": len(self.listing), "djray_version": djray.__version__,
                "input": self.input_root_uri}


def prepare(cfg: JobConfig) -> Plan:
    """Every check `run` makes before reading data. Raises ConfigError naming the key at fault."""
    storage = iofs.Storage.of(cfg.storage)
    try:
        root, listing = iofs.list_shard_sizes(cfg.input.path, cfg.input.format, storage)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"input.path: {e}") from None
    except OSError as e:
        raise _preflight_error("input.path", f"cannot list {cfg.input.path}", e) from None
    if not listing:
        suffix = "/".join(iofs.SHARD_SUFFIXES[cfg.input.format])
        raise ConfigError(f"input.path: no {suffix} shards found under {cfg.input.path}")
    input_root_uri = f"s3://{root}" if iofs.is_s3(cfg.input.path) else root
    if cfg.input.format == "parquet":
        _check_parquet_columns(cfg, storage, input_root_uri, [name for name, _ in listing])
    try:
        out_fs, out_root = iofs.resolve(cfg.output.path, storage)
    except ValueError as e:
        raise ConfigError(f"output.path: {e}") from None
    references = _reference_plans(cfg, storage)
    fps = fingerprints(cfg, listing, {i: ref.fps.signals for i, ref in references.items()})
    plan = Plan(cfg, fps, storage, input_root_uri, listing, out_fs, Layout(out_root),
                cfg.signals.from_ or cfg.output.path, references=references)
    plan.job = _check_output(plan)
    if plan.signals_from_elsewhere:
        _check_signals_source(plan)
    for section in (cfg.vision, cfg.clip, cfg.text):
        if section is not None:
            try:
                section.validate_sources()
            except ValueError as e:
                raise ConfigError(str(e)) from None
    plan.ops = phase_a_ops(cfg)
    plan.kept_ops = kept_ops(cfg)
    for ref in references.values():
        ref.ops = reference_ops(cfg, plan.ops)
    return plan


def _reference_plans(cfg: JobConfig, storage: iofs.Storage) -> dict[int, Plan]:
    """One plan per vas step with `target.images`: a phase A over the reference shards (no captions read) with the
    job's decode limits and clip section, writing under `<output>/_djray/reference/<its signals sha[:16]>`."""
    out: dict[int, Plan] = {}
    steps = cfg.steps()
    for i, sieve in enumerate(cfg.sieve):
        target = getattr(sieve, "target", None)
        if sieve.op == "vas" and getattr(target, "path", None) is not None:
            _check_reference_file(f"sieve.{i}.vas.target.path", target.path, cfg.clip.model, storage)
        if sieve.op != "vas" or getattr(target, "images", None) is None:
            continue
        key = f"sieve.{i}.vas.target.images"
        fmt = target.format or cfg.input.format
        try:
            root, listing = iofs.list_shard_sizes(target.images, fmt, storage)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"{key}: {e}") from None
        except OSError as e:
            raise _preflight_error(key, f"cannot list {target.images}", e) from None
        if not listing:
            raise ConfigError(f"{key}: no {'/'.join(iofs.SHARD_SUFFIXES[fmt])} shards found under {target.images}")
        cols = cfg.input.columns
        ref_cfg = JobConfig(
            input=InputConfig(path=target.images, format=fmt, rows_per_block=cfg.input.rows_per_block,
                              columns=ParquetColumns(key=cols.key, image=cols.image, caption="")),
            output=OutputConfig(path=cfg.output.path), storage=cfg.storage, ray=cfg.ray,
            decode=DecodeConfig(max_pixels=cfg.decode.max_pixels, min_side=cfg.decode.min_side), clip=cfg.clip)
        fps = fingerprints(ref_cfg, listing)
        uri = f"{cfg.output.path.rstrip('/')}/_djray/reference/{fps.signals[:16]}"
        ref_cfg = ref_cfg.model_copy(update={"output": OutputConfig(path=uri)})
        ref_fs, ref_root = iofs.resolve(uri, storage)
        step = next(j for j, s in enumerate(steps) if s is sieve)
        out[step] = Plan(ref_cfg, fps, storage, f"s3://{root}" if iofs.is_s3(target.images) else root, listing,
                         ref_fs, Layout(ref_root), uri)
    return out


def _check_reference_file(key: str, uri: str, model: str, storage: iofs.Storage) -> None:
    """A reference Parquet must be readable and embedded by the job's CLIP model (its footer; the weights are
    checked against phase A's model record when the step runs)."""
    from djray.ops.sieve.vas_reference import check_reference

    try:
        fs, path = iofs.resolve(uri, storage)
        with iofs.open_sequential(fs, path) as f:
            meta = pq.read_schema(f).metadata or {}
    except OSError as e:
        raise _preflight_error(key, f"cannot read {uri}", e) from None
    except (ValueError, pa.ArrowException) as e:
        raise ConfigError(f"{key}: cannot read {uri}: {e}") from None
    try:
        check_reference(uri, meta, model, None)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None


def reference_ops(cfg: JobConfig, ops: list[Op]) -> list[Op]:
    """decode → the job's own CLIP op (the same object: the same model, weights, resources and crop column)."""
    from djray.ops.decode import DecodeOp, DecodeParams
    from djray.ops.vision.clip_embed import ClipEmbedder

    clip = next(op for op in ops if isinstance(op, ClipEmbedder))
    size = {"image_size": clip.size} if clip.pixels == S.PIXELS else {"clip_image_size": clip.size}
    return [DecodeOp(DecodeParams(max_pixels=cfg.decode.max_pixels, min_side=cfg.decode.min_side, **size)), clip]


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


def _check_output(plan: Plan) -> dict[str, Any] | None:
    cfg, fs, layout = plan.cfg, plan.out_fs, plan.layout
    try:
        job = iofs.read_json(fs, layout.job)
        info = iofs.file_info(fs, layout.root)
    except OSError as e:
        raise _preflight_error("output.path", f"cannot access {cfg.output.path}", e) from None
    if isinstance(fs, pafs.LocalFileSystem):
        probe = layout.root
        while not os.path.exists(probe):
            probe = os.path.dirname(probe)
        if not os.access(probe, os.W_OK):
            raise ConfigError(f"output.path: {probe} is not writable")
    if cfg.output.mode == "overwrite":
        return None
    if job is not None:
        if job.get("signals_sha256") != plan.fps.signals:
            raise ConfigError(
                f"output.path: {cfg.output.path} holds signals computed with other signals parameters (input shards, "
                "decode, the vision model, weights, image size, aggregation or head, or the clip section); a new selection or text "
                "branch resumes in place, but new signals need another output.path or output.mode=overwrite")
        return job
    if info.type == pafs.FileType.Directory and iofs.file_info(fs, pafs.FileSelector(layout.root)):
        raise ConfigError(f"output.path: {cfg.output.path} is not empty and holds no djray run; "
                          "use an empty location or output.mode=overwrite")
    return None


def _check_signals_source(plan: Plan) -> None:
    source = plan.signals_uri
    try:
        fs, root = iofs.resolve(source, plan.storage)
        job = iofs.read_json(fs, Layout(root).job)
    except (OSError, ValueError) as e:
        raise ConfigError(f"signals.from: cannot read {source}: {e}") from None
    if root.rstrip("/") == plan.layout.root:
        raise ConfigError("signals.from: names this run's own output.path (leave it out to resume in place)")
    if job is None:
        raise ConfigError(f"signals.from: {source} holds no djray run")
    if job.get("signals_sha256") != plan.fps.signals:
        raise ConfigError(f"signals.from: the signals in {source} were computed with other signals parameters (input "
                          "shards, decode, the vision model, weights, image size, aggregation or head, or the clip section) than this "
                          "config's")
    sealed = Ledger(fs, Layout(root).sealed_dir(plan.fps.signals)).listing()
    missing = [s for s in plan.shards if s not in sealed]
    if missing:
        raise ConfigError(f"signals.from: {len(missing)} of {len(plan.shards)} shards have no signals in {source} "
                          f"(its phase A is incomplete), e.g. {missing[0]}")
