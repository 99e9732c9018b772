"""The recaption pass of an infogrowth `recaption: true` step (seed-algorithms §6.2), between its δ and its decisions.

    rows alive at the step with align < δ (signals store, one read task per shard: caption_raw, vis_evidence,
    clip_image_embedding)  →  RecaptionOp (the text branch's engine: actor pool)  →  ClipTextScorer (the job's CLIP
    text tower: actor pool)  →  per-shard fragments under the step's directory (djray.runtime.recaption_store)

Only the rows below δ reach the engine. The runtime decides how the ops run, as in phases A and C: each is a
stateful op (a model or a client pool), so an actor pool sized to the live cluster (runtime/resources.py), and the
two share one pool when their resources are equal (runtime/fuse.py, as DINO and CLIP in phase A); the reader and
the staging are tasks. The driver counts staged rows per shard (O(#shards)) and writes a shard's
`recaptioned` marker once all its rows are staged; a re-run skips marked shards and restages the others, so no
row is sent to the LLM twice after a crash of a finished shard. `EngineUnavailable` fails the stream and the job
(resumable), never a row. Counts for the step record come from a scan of the fragments (a few bytes per row).
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from djray import schema as S
from djray.io import fs as iofs
from djray.io.errors import task_args
from djray.ops.sieve.clip_score import clip_scores
from djray.ops.sieve.infogrowth import CleanParams
from djray.runtime.decisions import SelectionContext, Step, alive_rows
from djray.runtime.kept import blocks_then_marker, op_layout
from djray.runtime.ledger import Ledger
from djray.runtime.progress import Progress
from djray.runtime.recaption_store import SCHEMA, ledger_dir, read_recaptions, recaption_dir
from djray.runtime.signals import fragment_name, stage_by_shard

READ_COLUMNS = (S.CLIP_SCORE, S.CAPTION_RAW, S.CLIP_IMAGE_EMBEDDING)


def read_low_align_rows(ctx: SelectionContext, order: int, before: int, delta: float, evidence: bool,
                        rows_per_block: int):
    """A shard's rows alive at step `before` with align < δ, in the op-facing layout, then its end-of-shard marker."""
    columns = READ_COLUMNS + ((S.VIS_EVIDENCE,) if evidence else ())
    rows = alive_rows(ctx, order, columns, before)
    scored = rows.column(S.CLIP_SCORE).is_valid().combine_chunks().to_numpy(zero_copy_only=False)
    low = (clip_scores(rows) < np.float32(delta)) & scored
    rows = op_layout(ctx.shards[order], rows.filter(pa.array(low)).select([S.KEY, S.SRC_INDEX, *columns[1:]]))
    yield from blocks_then_marker(ctx.shards[order], rows, rows_per_block)


class LowAlignDatasource(Datasource):
    def __init__(self, ctx: SelectionContext, orders: list[int], before: int, delta: float, evidence: bool,
                 rows_per_block: int):
        super().__init__()
        self.ctx, self.orders = ctx, orders
        self.args = (before, delta, evidence, rows_per_block)

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        return [ReadTask(functools.partial(read_low_align_rows, self.ctx, o, *self.args),
                         BlockMetadata(num_rows=None, size_bytes=None, input_files=[self.ctx.shards[o]],
                                       exec_stats=None))
                for o in self.orders]


def stage_recaptions(batch: pa.Table, ctx: SelectionContext, step_name: str) -> pa.Table:
    fs, layout = ctx.out()

    def write(src_shard: str, rows: pa.Table) -> None:
        table = pa.Table.from_arrays([rows.column(f.name).cast(f.type) for f in SCHEMA], schema=SCHEMA)
        path = f"{recaption_dir(layout, step_name, src_shard)}/{fragment_name(rows)}"
        iofs.write_table_atomic(fs, path, table, compression="zstd")

    return stage_by_shard(batch, write)


def recaption_ops(params: CleanParams, cluster) -> list:
    from djray.ops.text.recaption import RecaptionOp
    from djray.ops.vision.clip_text import ClipTextScorer
    from djray.runtime.resources import resolve_phase

    ops = [RecaptionOp(params.text), ClipTextScorer(params.clip)]
    resolve_phase(ops, cluster)
    return ops


def run_recaption(ctx: SelectionContext, step: Step, params: CleanParams, delta: float, chunks: list[list[int]],
                  evidence: bool, attached: bool, rows_per_block: int,
                  log=lambda m: None) -> dict[str, Any]:
    """Re-caption and re-score the rows below δ of every shard not yet marked; return the step's recaption counts."""
    from djray.runtime.fuse import fuse_stateful
    from djray.runtime.ray_data import add_op
    from djray.runtime.resources import live_cluster
    from djray.runtime.stream import consume

    fs, layout = ctx.out()
    ledger_path = ledger_dir(layout, step.name)
    done = Ledger(fs, ledger_path).listing()
    todo = [s for s in ctx.shards if s not in done]
    if todo and not math.isinf(delta):  # δ = ±inf: no row is below it, or none could reach it
        for s in todo:
            iofs.delete_dir(fs, recaption_dir(layout, step.name, s))
        ops = recaption_ops(params, live_cluster(attached))
        for op in ops:
            r = op.resources
            log(f"[select] {step.name}: {op.name} on {r.pool_size} actor(s) x {r.num_cpus:g} CPU, {r.num_gpus:g} GPU")
        order = {s: i for i, s in enumerate(ctx.shards)}
        retry = task_args(ctx.task_retries)
        ds = ray.data.read_datasource(
            LowAlignDatasource(ctx, [order[s] for s in todo], step.index, delta, evidence, rows_per_block),
            override_num_blocks=max(1, len(todo)), ray_remote_args=retry)
        for op in fuse_stateful(ops):  # equal resources (one GPU each on a one-GPU node): one actor holds both
            ds = add_op(ds, op, ctx.output_uri, ctx.storage, retry, rows_per_block)
        ds = ds.map_batches(functools.partial(stage_recaptions, ctx=ctx, step_name=step.name), batch_size=None,
                            batch_format="pyarrow", zero_copy_batch=True, **retry)
        with ThreadPoolExecutor(8) as pool:
            ledger = Ledger(fs, ledger_path, pool)
            consume(ds, todo, lambda s, n: ledger.write(s, {"shard": s, "rows": n}),
                    Progress("recaption", len(todo), enabled=False))
            ledger.flush()
    parts = ray.get([_counts.options(**task_args(ctx.task_retries)).remote(ctx, step.name, c, delta) for c in chunks])
    total: Counter = Counter()
    for part in parts:
        total.update(part)
    codes = {k[len("code:"):]: v for k, v in sorted(total.items()) if k.startswith("code:")}
    return {"recaptioned": total["recaptioned"], "rescued": total["rescued"], "failed": total["failed"],
            "failed_by_code": codes, "engine": params.text.engine, "model": params.text.model}


@ray.remote(num_cpus=1)
def _counts(ctx: SelectionContext, step_name: str, orders: list[int], delta: float) -> Counter:
    fs, layout = ctx.out()
    c: Counter = Counter()
    for o in orders:
        t = read_recaptions(fs, layout, step_name, ctx.shards[o], [S.RECAPTION_CODE, S.RECAPTION_SCORE])
        score = t.column(S.RECAPTION_SCORE)
        c["recaptioned"] += t.num_rows
        c["failed"] += t.num_rows - (pc.sum(score.is_valid().cast(pa.int64())).as_py() or 0)
        ok = pc.fill_null(pc.greater_equal(score, pa.scalar(np.float32(delta), pa.float32())), False)
        c["rescued"] += pc.sum(ok.cast(pa.int64())).as_py() or 0
        c.update(f"code:{x}" for x in t.column(S.RECAPTION_CODE).drop_null().to_pylist())
    return c
