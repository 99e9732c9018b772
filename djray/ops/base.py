"""The op contract.

An op declares typed parameters, the columns it reads and writes, and default resources. The runtime (not the op)
decides whether it runs as a Ray task or an actor pool: ops with `stateful = True` (a model loaded in `setup()`)
become actor pools. The same object runs in-process in unit tests:

    op = DecodeOp(DecodeParams(image_size=224)); op.setup(); out = op(batch)

`__call__` receives a `pyarrow.Table` batch and returns a dict of *full-length* columns to set on it. Ops never drop
rows. A filtering op returns `REJECT_REASON` / `REJECT_DETAIL` arrays (null where it keeps the row); the runtime stamps
`REJECT_STAGE` with the op's `stage` for newly rejected rows. Ops must skip rows that are already rejected (use
`alive_mask`).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from djray import schema as S


RUNTIME: dict[str, Any] = {"runtime": True}  # Field(json_schema_extra=RUNTIME): how a job runs, not what it writes


def is_runtime(field: Any) -> bool:
    """True for a config field marked RUNTIME: left out of every fingerprint (a resumed run may change it)."""
    extra = getattr(field, "json_schema_extra", None)
    return isinstance(extra, dict) and bool(extra.get("runtime"))


class Params(BaseModel):
    """Base class for op parameters: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ResourcesParams(Params):
    """The one `resources:` block of every model section (vision, clip, text): per actor, kept apart from the op's
    parameters (a RUNTIME field: it changes where a job runs, never what it writes). A key left out (null) is
    resolved against the live cluster once Ray is up (`djray.runtime.resources`)."""

    num_gpus: float | None = Field(None, ge=0)  # per actor
    num_cpus: float | None = Field(None, gt=0)  # per actor (a scheduling token: Ray's CPU count)
    pool_size: int | None = Field(None, ge=1)  # actors in the pool
    threads: int | None = Field(None, ge=1)  # torch threads per call
    calls: int | None = Field(None, ge=1)  # batches one actor runs at once, each on its own thread (one model)

    def for_op(self, batch_size: int | None) -> Resources:
        return Resources(num_cpus=self.num_cpus, num_gpus=self.num_gpus, pool_size=self.pool_size,
                         batch_size=batch_size, threads=self.threads, calls=self.calls)


@dataclass(frozen=True)
class Resources:
    """What an op asks of the cluster. None: the runtime resolves it against the live cluster once Ray is up
    (`djray.runtime.resources`), e.g. one model actor per core without GPUs, one per GPU with them."""

    num_cpus: float | None = 1.0
    num_gpus: float | None = 0.0
    pool_size: int | None = 1  # actor pool size for stateful ops
    batch_size: int | None = 64
    threads: int | None = None  # torch threads per call (set in the op's setup()); None: torch's default
    calls: int | None = 1  # batches an actor runs at once, each on its own Python thread (ops that are thread_safe)


class Op:
    name: ClassVar[str] = "op"
    stage: ClassVar[str] = "op"
    reads: ClassVar[tuple[str, ...]] = ()
    writes: ClassVar[tuple[str, ...]] = ()
    stateful: ClassVar[bool] = False  # True: load something heavy in setup() → runs in an actor pool
    thread_safe: ClassVar[bool] = False  # True: __call__ may run on several threads at once (the model read-only)

    def __init__(self, params: Params | None = None, resources: Resources | None = None):
        self.params = params
        self.resources = resources or Resources()

    def setup(self) -> None:
        """Load models or other heavy state. Called once per worker, never at import."""

    def __call__(self, batch: pa.Table) -> dict[str, Any]:
        raise NotImplementedError


def forward_pool(resources: Resources, name: str) -> ThreadPoolExecutor | None:
    """The pool of `calls` threads a multi-call CPU actor's forwards share (so the last block of a run is spread over
    every core), or None for one call at a time. Threads do not pickle: an op makes its pool in setup()."""
    calls = resources.calls or 1
    return ThreadPoolExecutor(calls, thread_name_prefix=f"{name}-forward") if calls > 1 else None


def alive_mask(batch: pa.Table) -> np.ndarray:
    """Boolean mask of rows not rejected by an earlier stage."""
    return np.asarray(batch.column(S.REJECT_REASON).is_null().to_numpy(zero_copy_only=False), dtype=bool)


def apply_op_output(batch: pa.Table, op: Op, out: dict[str, Any]) -> pa.Table:
    """Set the op's output columns on the batch and stamp the reject stage for rows it newly rejected."""
    n = batch.num_rows
    new_reasons = out.pop(S.REJECT_REASON, None)
    new_details = out.pop(S.REJECT_DETAIL, None)
    for name, col in out.items():
        want = S.column_type(name)  # outputs take the contract's types, whatever the op built
        arr = col if isinstance(col, (pa.Array, pa.ChunkedArray)) else pa.array(col, type=want)
        if len(arr) != n:
            raise ValueError(f"op {op.name} returned {len(arr)} values for column {name!r}, batch has {n} rows")
        if want is not None and arr.type != want:
            arr = arr.cast(want)
        batch = set_column(batch, name, arr)
    if new_reasons is not None:
        reasons = pa.array(new_reasons, type=pa.string())
        details = pa.array(new_details if new_details is not None else [None] * n, type=pa.string())
        if len(reasons) != n or len(details) != n:
            raise ValueError(f"op {op.name} returned reject columns of the wrong length")
        alive = alive_mask(batch)
        newly = alive & ~np.asarray(reasons.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        if newly.any():
            mask = pa.array(newly)
            stage = pa.array([op.stage] * n, type=pa.string())
            batch = set_column(batch, S.REJECT_STAGE, pc.if_else(mask, stage, batch.column(S.REJECT_STAGE)))
            batch = set_column(batch, S.REJECT_REASON, pc.if_else(mask, reasons, batch.column(S.REJECT_REASON)))
            batch = set_column(batch, S.REJECT_DETAIL, pc.if_else(mask, details, batch.column(S.REJECT_DETAIL)))
    return batch


def set_column(table: pa.Table, name: str, values: pa.Array | pa.ChunkedArray) -> pa.Table:
    idx = table.schema.get_field_index(name)
    if idx >= 0:
        return table.set_column(idx, name, values)
    return table.append_column(name, values)
