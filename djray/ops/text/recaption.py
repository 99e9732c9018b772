"""RecaptionOp: a new caption for a row whose image-text alignment is low (infogrowth `recaption: true`, seed-algorithms
§6.2, where MiniGPT-4 wrote the recaptions), written by the text branch's engine.

It is the text branch itself (`TextRewriteOp` in `rewrite` mode): the same prompt building (P_M, plus P_O from
``vis_evidence`` when the class head produced labels for the row, else the text-only prompt), the same engines, the
same validation of every output, the same per-actor cache. Only the outputs differ:

* ``_recaption``      the validated recaption, or null;
* ``_recaption_code`` null, or why there is no recaption: a `djray.ops.text.validate.Fallback` code (``too_long``,
                      ``refusal``, ``engine_error``, ``empty_input`` …). A row without one is not rescued.

`EngineUnavailable` propagates (the job fails, resumable), exactly as in the text branch: an outage never turns into
drops. The runtime (djray.runtime.recaption) feeds it only the rows below δ and decides how it runs.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from djray import schema as S
from djray.ops.base import Resources
from djray.ops.text.params import TextParams
from djray.ops.text.rewrite import TextRewriteOp


class RecaptionOp(TextRewriteOp):
    name: ClassVar[str] = "infogrowth_recaption"
    writes: ClassVar[tuple[str, ...]] = (S.RECAPTION, S.RECAPTION_CODE)

    def __init__(self, params: TextParams, resources: Resources | None = None, engine: Any = None,
                 engine_options: dict[str, Any] | None = None):
        if params.engine is None:
            raise ValueError("recaption needs text.engine and text.model")
        super().__init__(params.model_copy(update={"mode": "rewrite"}), resources, engine, engine_options)

    def __call__(self, batch: pa.Table) -> dict[str, Any]:
        out = super().__call__(batch)
        captions = out[S.CAPTION].to_pylist()
        sources = out[S.CAPTION_SOURCE].to_pylist()
        reasons = out[S.TEXT_FALLBACK_REASON].to_pylist()
        text: list[str | None] = [None] * batch.num_rows
        code: list[str | None] = [None] * batch.num_rows
        for i in np.flatnonzero([s is not None for s in sources]):
            if sources[i] == "rewrite":  # validated (a `no_evidence` note only says the prompt had no P_O)
                text[i] = captions[i]
            else:
                code[i] = reasons[i] or "not_rewritten"
        return {S.RECAPTION: pa.array(text, pa.string()), S.RECAPTION_CODE: pa.array(code, pa.string())}
