"""Model ops that share one actor: the runtime's choice of running DINO and CLIP in one accelerator pass.

Consecutive stateful ops with equal resources (CPUs, GPUs, pool size and batch size per actor) become one
`FusedOp`: one actor pool whose actors load every model once and run them in turn on each batch. The pixels of a
batch cross the object store once instead of once per model, one pool holds the accelerator instead of two
competing for it, and on a CPU-only machine one actor per core keeps every core busy instead of splitting cores
between pools (`benchmarks/vision_throughput.py --clip` measures both shapes: docs/sieves.md). Ops with different
resources stay separate pools (e.g. a CLIP tower on its own GPU).
"""

from __future__ import annotations

from typing import Any, ClassVar

import pyarrow as pa

from djray.ops.base import Op, apply_op_output


class FusedOp(Op):
    """Several stateful ops as one: setup each, run each on the batch the previous one returned."""

    stateful: ClassVar[bool] = True

    def __init__(self, parts: list[Op]):
        super().__init__(None, parts[0].resources)
        self.parts = parts
        self.thread_safe = all(p.thread_safe for p in parts)  # type: ignore[misc]
        self.name = "+".join(p.name for p in parts)  # type: ignore[misc]
        self.stage = parts[0].stage  # type: ignore[misc]
        self.reads = tuple(dict.fromkeys(c for p in parts for c in p.reads))  # type: ignore[misc]
        self.writes = tuple(dict.fromkeys(c for p in parts for c in p.writes))  # type: ignore[misc]

    def setup(self) -> None:
        for p in self.parts:
            p.setup()

    def records(self) -> dict[str, dict[str, Any]]:
        """Each part's `describe()` (the manifest keeps one model record per op)."""
        return {p.name: p.describe() for p in self.parts if hasattr(p, "describe")}

    def run(self, batch: pa.Table) -> pa.Table:
        for p in self.parts:
            batch = apply_op_output(batch, p, p(batch))
        return batch


def fuse_stateful(ops: list[Op]) -> list[Op]:
    """`ops` with each run of consecutive stateful ops of equal resources merged into one `FusedOp`."""
    out: list[Op] = []
    for op in ops:
        prev = out[-1] if out else None
        if op.stateful and prev is not None and prev.stateful and prev.resources == op.resources:
            parts = prev.parts if isinstance(prev, FusedOp) else [prev]
            out[-1] = FusedOp([*parts, op])
        else:
            out.append(op)
    return out
