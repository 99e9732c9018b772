"""The streaming phases' drivers: phase A (read → ops → staged signals → sealed shards) and phase C's kept-rows
pass (kept rows → text ops → column patches).

Both consume a Ray Data plan whose last stage stages a batch and returns one summary row per shard in it; the driver
only counts rows per shard (O(#shards) state) and acts when a shard is complete: phase A hands it to a seal task
(small shards share one), the kept-rows pass writes its patched marker.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import ray

from djray import schema as S
from djray.io import fs as iofs
from djray.io.errors import task_args
from djray.runtime.cluster import JobError
from djray.runtime.ledger import Ledger
from djray.runtime.progress import Progress
from djray.runtime.ray_data import end_model_actors, kept_rows_plan, staging_plan
from djray.runtime.signals import seal_shards_at


def consume(ds: ray.data.Dataset, todo: list[str], on_complete: Callable[[str, int], None], bar: Progress) -> int:
    """Count staged rows per shard; call `on_complete(shard, rows)` once a shard's rows are all staged."""
    batches = iter(ds.iter_batches(batch_format="pyarrow", batch_size=None))
    staged: dict[str, int] = {}
    totals: dict[str, int] = {}
    rows = complete = 0
    # The streaming executor is shut down as soon as the plan ends: its actor pools would otherwise hold their
    # CPUs/GPUs until the iterator is garbage-collected, starving the next run in this process. A failed plan's
    # leftover model actors are ended too (end_model_actors).
    try:
        for batch in batches:
            for shard, n, total in zip(*(batch.column(c).to_pylist() for c in ("src_shard", "rows", "shard_rows"))):
                staged[shard] = staged.get(shard, 0) + n
                rows += n
                if total is not None:
                    totals[shard] = total
                if shard in totals and staged[shard] == totals[shard]:
                    on_complete(shard, totals.pop(shard))
                    complete += 1
            bar.update(complete, rows)
    except BaseException:
        batches.close()
        end_model_actors()
        raise
    batches.close()
    bar.close()
    if complete != len(todo):
        missing = sorted(set(todo) - set(staged) - set(totals)) or sorted(totals)
        raise JobError(f"{len(todo) - complete} shard(s) did not stream completely, e.g. {missing[:1]}")
    return rows


class _Sealer:
    """Seal completed shards in the background: small shards share a task; results are collected as they come."""

    def __init__(self, plan, schema: pa.Schema):
        self.task = ray.remote(num_cpus=0.5, **task_args(plan.cfg.ray.task_retries))(seal_shards_at)
        self.plan, self.schema, self.footer = plan, schema, plan.footer(signals=True)
        self.pending: list[tuple[str, int]] = []
        self.inflight: list[Any] = []
        self.sealed = 0

    def add(self, shard: str, rows_in: int) -> None:
        self.pending.append((shard, rows_in))
        if sum(n for _, n in self.pending) >= self.plan.cfg.ray.seal_rows:
            self._submit()
        self._collect(block=False)

    def _submit(self) -> None:
        if self.pending:
            p = self.plan
            self.inflight.append(self.task.remote(p.cfg.output.path, p.storage, self.pending, self.schema,
                                                  self.footer, p.fps.signals))
            self.pending = []

    def _collect(self, block: bool) -> None:
        while self.inflight:
            ready, self.inflight = ray.wait(self.inflight, num_returns=1, timeout=None if block else 0)
            if not ready:
                return
            self.sealed += len(ray.get(ready[0]))

    def finish(self) -> int:
        self._submit()
        self._collect(block=True)
        return self.sealed


def run_phase_a(plan, todo: list[str], progress: bool) -> int:
    """Stream `todo` shards through phase A and seal each one's signals; returns the rows streamed."""
    fs, layout = plan.out_fs, plan.layout
    for s in todo:  # fragments of an interrupted attempt: this attempt restages every row of the shard
        iofs.delete_dir(fs, layout.staging_dir(s))
    order = {s: i for i, s in enumerate(plan.shards)}
    schema = S.signals_schema(vision=plan.cfg.vision is not None, clip=plan.cfg.clip is not None)
    ds = staging_plan([(s, order[s]) for s in todo], plan.read_spec(), plan.ops, plan.cfg.output.path, plan.storage,
                      schema)
    sealer = _Sealer(plan, schema)
    try:
        rows = consume(ds, todo, sealer.add, Progress("govern", len(todo), enabled=progress))
    except BaseException:
        sealer.finish()  # the shards that did stream completely are kept, then the failure is reported
        raise
    sealed = sealer.finish()
    if sealed != len(todo):
        raise JobError(f"{len(todo) - sealed} shard(s) were streamed but not sealed")
    return rows


def run_kept_ops(plan, todo: list[str], progress: bool) -> int:
    """Phase C's kept-rows pass for `todo` shards: the ops that see kept rows only, staged as column patches."""
    from djray.registry import kept_columns

    fs, layout = plan.out_fs, plan.layout
    for s in todo:
        iofs.delete_dir(fs, layout.patch_dir(plan.fps.output, s))
    order = {s: i for i, s in enumerate(plan.shards)}
    ds = kept_rows_plan(plan.selection_context(), [order[s] for s in todo], plan.kept_ops, plan.fps.output,
                        kept_columns(plan.cfg), plan.cfg.input.rows_per_block)
    with ThreadPoolExecutor(8) as pool:
        ledger = Ledger(fs, layout.patched_dir(plan.fps.output), pool)
        rows = consume(ds, todo, lambda s, n: ledger.write(s, {"shard": s, "rows": n}),
                       Progress("text", len(todo), enabled=progress))
        ledger.flush()
    return rows
