"""Reference images for vas (`target: {kind: reference, images: URI}`): embedded by the job itself, once.

Before phase B, each vas step that reads a reference set gets it bound (`ReferenceTarget.bind`): the job's CLIP model
and weights identity (from phase A's model record, what any reference file must match), and for `images` the Parquet
the images were embedded into. Embedding is a phase A of its own (runtime/stream.py, the same Ray Data plan): read →
decode → the job's CLIP op in its actor pool → sealed signals files, under

    OUTPUT/_djray/reference/<signals sha of the reference>/     (listing + sizes, decode limits, clip model/weights)

then one task folds the sealed files into `reference.parquet` (`clip_image_embedding` of every embedded image, the
model and weights identity in metadata: `vas.write_reference`'s format) and the driver writes `reference.json` (the
counts) after it. A reference set whose `reference.json` exists (in this output, or in `signals.from`'s) is not
embedded again; an interrupted pass resumes shard by shard. Reference images that cannot be used (undecodable, too
small, non-finite embedding) are counted by reason in the report: they are no rows of the job (never in rejects/).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from djray import schema as S
from djray.io import fs as iofs
from djray.io.errors import task_args
from djray.ops.sieve.vas import PoolTarget, VasParams
from djray.ops.sieve.vas_reference import reference_metadata, weights_identity
from djray.ops.vision.clip_embed import ClipEmbedder
from djray.runtime.layout import Layout
from djray.runtime.ledger import Ledger
from djray.runtime.stream import run_phase_a

EXAMPLES = 5  # unusable reference images named in the report


def bind_references(plan, params: list, log: Callable[[str], None], progress: bool) -> None:
    """Bind every vas reference target of `params` (the phase-B steps) whose step is not finished yet."""
    ctx = plan.selection_context()
    out_fs, layout = ctx.out()
    sig_fs, sig_layout = ctx.sig()
    weights = None
    for step, p in zip(ctx.steps, params):
        if not isinstance(p, VasParams) or isinstance(p.target, PoolTarget):
            continue
        if iofs.read_json(out_fs, layout.step_marker(step.name)) is not None:
            continue  # decided already: run_selection skips it
        if weights is None:
            record = iofs.read_json(sig_fs, sig_layout.model_record(ClipEmbedder.name)) or {}
            weights = weights_identity(record.get("model"))
        embedded, report = None, None
        if p.target.images is not None:
            embedded, report = ensure_reference(plan, plan.references[step.index], log, progress)
        p.target.bind(plan.cfg.clip.model, weights, embedded, report, plan.storage)


def ensure_reference(plan, ref, log: Callable[[str], None], progress: bool) -> tuple[str, dict[str, Any]]:
    """(URI of the reference Parquet, report) — embedded now, or found from an earlier run."""
    name = ref.cfg.output.path.rsplit("/", 1)[-1]
    candidates = [ref.cfg.output.path]
    if plan.signals_from_elsewhere:
        candidates.append(f"{plan.signals_uri.rstrip('/')}/_djray/reference/{name}")
    images = ref.cfg.input.path
    for uri in candidates:
        fs, root = iofs.resolve(uri, ref.storage)
        report = iofs.read_json(fs, f"{root}/reference.json")
        if report is not None:
            log(f"[reference] {images}: cached, {report['embedded']:,} embeddings in {uri}/reference.parquet")
            return f"{uri}/reference.parquet", {**report, "cached": True}
    fs, layout = ref.out_fs, ref.layout
    iofs.write_json(fs, layout.job, ref.job_record())
    sealed = Ledger(fs, layout.sealed_dir(ref.fps.signals)).listing()
    todo = [s for s in ref.shards if s not in sealed]
    log(f"[reference] {images}: embedding {len(todo)} of {len(ref.shards)} shard(s) with {ref.cfg.clip.model}")
    if todo:
        run_phase_a(ref, todo, progress)
    record = iofs.read_json(fs, layout.model_record(ClipEmbedder.name)) or {}
    weights = weights_identity(record.get("model"))
    uri = ref.cfg.output.path
    counts = ray.get(_consolidate.options(**task_args(ref.cfg.ray.task_retries)).remote(
        uri, ref.storage, ref.shards, ref.cfg.clip.model, weights))
    report = {"images": images, "shards": len(ref.shards), "fingerprint": ref.fps.signals, **counts,
              "model": ref.cfg.clip.model, "weights": weights}
    iofs.write_json(fs, f"{layout.root}/reference.json", report)  # written last: the set is complete
    iofs.delete_dir(fs, f"{layout.root}/signals")
    for part in ("staging", "sealed", "models"):
        iofs.delete_dir(fs, f"{layout.state}/{part}")
    log(f"[reference] {images}: {counts['embedded']:,} of {counts['rows']:,} image(s) embedded"
        + (f", unusable: {counts['rejected_by_reason']}" if counts["rejected"] else ""))
    return f"{uri}/reference.parquet", {**report, "cached": False}


@ray.remote(num_cpus=1)
def _consolidate(uri: str, storage: iofs.Storage, shards: list[str], model: str,
                 weights: dict[str, Any] | None) -> dict[str, Any]:
    """The sealed signals files → reference.parquet (embedded rows: key, src_shard, clip_image_embedding), streamed
    one file at a time; returns the counts and the first few unusable images."""
    fs, root = iofs.resolve(uri, storage)
    layout = Layout(root)
    schema = pa.schema([pa.field(S.KEY, pa.string()), pa.field(S.SRC_SHARD, pa.string()),
                        pa.field(S.CLIP_IMAGE_EMBEDDING, pa.list_(pa.float32()))],
                       metadata=reference_metadata(model, weights))
    rows = embedded = 0
    reasons: dict[str, int] = {}
    examples: list[dict[str, Any]] = []
    cols = [S.KEY, S.SRC_SHARD, S.CLIP_IMAGE_EMBEDDING, S.STAGE, S.REASON, S.DETAIL]
    with fs.open_output_stream(f"{root}/reference.parquet") as f, pq.ParquetWriter(f, schema) as writer:
        for shard in shards:
            t = iofs.read_parquet(fs, layout.signals(shard), cols)
            rows += t.num_rows
            ok = np.asarray(t.column(S.REASON).is_null().to_numpy(zero_copy_only=False), dtype=bool)
            for r in t.filter(pa.array(~ok)).to_pylist():
                reasons[r[S.REASON]] = reasons.get(r[S.REASON], 0) + 1
                if len(examples) < EXAMPLES:
                    examples.append({k: r[k] for k in (S.SRC_SHARD, S.KEY, S.STAGE, S.REASON, S.DETAIL)})
            kept = t.filter(pa.array(ok)).select([S.KEY, S.SRC_SHARD, S.CLIP_IMAGE_EMBEDDING])
            embedded += kept.num_rows
            writer.write_table(kept.cast(schema.remove_metadata()))
    return {"rows": rows, "embedded": embedded, "rejected": rows - embedded,
            "rejected_by_reason": dict(sorted(reasons.items())), "examples": examples}
