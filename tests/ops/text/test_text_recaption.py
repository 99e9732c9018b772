"""RecaptionOp: the text branch's prompt (P_O when the row has evidence) and validation; outputs (recaption, code)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from djray import schema as S
from djray.ops.text.engines import EngineUnavailable
from djray.ops.text.params import TextParams
from djray.ops.text.prompts import OBJECTS_OPEN
from djray.ops.text.recaption import RecaptionOp

PARAMS = TextParams(mode="none", evidence="vision", engine="openai", model="m", endpoint="http://127.0.0.1:9/v1")


class Engine:
    name = "scripted"

    def __init__(self, replies, fail=False):
        self.replies, self.fail, self.users = replies, fail, []

    def generate(self, conversations):
        if self.fail:
            raise EngineUnavailable("down")
        self.users += [c[-1]["content"] for c in conversations]
        return [self.replies[len(self.users) - len(conversations) + i] for i in range(len(conversations))]


def _batch(captions, evidence):
    n = len(captions)
    return pa.table({S.KEY: [f"k{i}" for i in range(n)], S.CAPTION_RAW: pa.array(captions, pa.string()),
                     S.VIS_EVIDENCE: pa.array(evidence, pa.list_(pa.string())),
                     **{c: pa.nulls(n, pa.string()) for c in (S.REJECT_STAGE, S.REJECT_REASON, S.REJECT_DETAIL)}})


def test_recaption_outputs_and_codes():
    engine = Engine(["a brown dog running on the beach", "I'm sorry, I cannot help with that."])
    op = RecaptionOp(PARAMS, engine=engine)
    op.setup()
    out = op(_batch(["a dgo on teh beach", "a red car", "   "], [["dog"], None, None]))
    assert set(out) == set(op.writes) == {S.RECAPTION, S.RECAPTION_CODE}
    assert out[S.RECAPTION].to_pylist() == ["a brown dog running on the beach", None, None]
    assert out[S.RECAPTION_CODE].to_pylist() == [None, "refusal", "empty_input"]  # no call for an empty caption
    assert OBJECTS_OPEN + "dog" in engine.users[0] and OBJECTS_OPEN not in engine.users[1]  # P_O only with evidence
    assert op.params.mode == "rewrite" and len(engine.users) == 2


def test_engine_outage_propagates():
    op = RecaptionOp(PARAMS, engine=Engine([], fail=True))
    op.setup()
    with pytest.raises(EngineUnavailable):
        op(_batch(["a red car"], [None]))
