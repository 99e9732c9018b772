"""The op contract's runtime side: outputs set on the batch with the contract's types, rejects stamped once."""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa
import pytest

from djray import schema as S
from djray.ops.base import Op, apply_op_output


class _Scores(Op):
    name: ClassVar[str] = "scores"
    stage: ClassVar[str] = "vision"


def _batch(n: int = 2) -> pa.Table:
    return pa.table({S.KEY: ["a", "b"][:n], S.REJECT_STAGE: pa.nulls(n, pa.string()),
                     S.REJECT_REASON: pa.array(["corrupt_image", None][:n], pa.string()),
                     S.REJECT_DETAIL: pa.nulls(n, pa.string())})


def test_outputs_are_cast_to_the_contract_types():
    out = apply_op_output(_batch(), _Scores(), {S.PATCH_SCORES: [[0.5, 0.25], [1.0, 2.0]], S.GRID_H: [14, 14],
                                                "_private": [1.5, 2.5]})
    assert out.schema.field(S.PATCH_SCORES).type == pa.list_(pa.float32())
    assert out.schema.field(S.GRID_H).type == pa.int16()
    assert out.schema.field("_private").type == pa.float64()  # not a contract column: left as built


def test_only_alive_rows_get_the_op_stage():
    out = apply_op_output(_batch(), _Scores(), {S.REJECT_REASON: ["nonfinite_scores", "nonfinite_scores"],
                                                S.REJECT_DETAIL: ["x", "y"]})
    assert out.column(S.REJECT_STAGE).to_pylist() == [None, "vision"]  # row 0 keeps its earlier (null-stage) reject
    assert out.column(S.REJECT_REASON).to_pylist() == ["corrupt_image", "nonfinite_scores"]


def test_wrong_length_is_an_error():
    with pytest.raises(ValueError, match="returned 1 values"):
        apply_op_output(_batch(), _Scores(), {S.GRID_H: [1]})
