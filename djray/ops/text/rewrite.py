"""TextRewriteOp: the text branch (paper §3.2, Eq. 5: T' = Ψ_txt(P_M, P_O, T); Tab. 5e ablations as `mode`).

Reads ``caption_raw``, ``vis_evidence`` (classes above ε from the vision branch; absent column or empty list = no
evidence) and the alive mask. Writes, for alive rows, ``caption``, ``caption_source`` and ``_text_fallback_reason``
(null when nothing fell back); rejected rows get nulls in all three. It never rejects a row: any failure of one row
falls back to the normalised caption. A failure of the engine itself (`EngineUnavailable`) propagates and fails the
shard, which a re-run resumes: no caption is ever written empty because a server was down.

Per mode (``norm`` = `normalize(caption_raw)`; ``src0`` = ``original`` if norm == caption_raw else ``normalized``):

| mode | caption | caption_source | _text_fallback_reason |
|---|---|---|---|
| none | caption_raw, verbatim (the Tab. 5e baseline) | original | null |
| text_only, no engine | norm | src0 | null |
| text_only + engine | LLM(P_M) if it validates, else norm | rewrite / fallback | null / code |
| concat, evidence | ``"{norm without trailing .,;:!?…}, {label1}, {label2}"`` | concat | null |
| concat, no evidence | norm | src0 | no_evidence |
| rewrite, evidence | LLM(P_M + P_O) if it validates, else norm | rewrite / fallback | null / code |
| rewrite, no evidence | LLM(P_M) (= text_only) if it validates, else norm | rewrite / fallback | no_evidence / code |

``text.evidence: none`` ignores ``vis_evidence`` even when the column is there: every row takes the "no evidence"
line (the text-only ablation of Tab. 5e, chosen on purpose). Without it, rewrite / concat with no class head is a
config error (`JobConfig.cross_check`), never a silent ablation.

A caption that is empty after normalisation is kept as it is (source ``original``, reason ``empty_input``) in every
mode but none. Codes: `djray.ops.text.validate.Fallback`. Identical prompts are generated once (within a batch and
through a bounded per-actor cache), so repeated web captions ("image", "photo") cost one request.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter, OrderedDict
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from djray import schema as S
from djray.ops.base import Op, Resources, alive_mask
from djray.ops.text.engines import EngineUnavailable, Truncated, build_engine
from djray.ops.text.normalize import normalize
from djray.ops.text.params import LLM_MODES, TextParams
from djray.ops.text.prompts import PromptTemplate, load_template, messages_for, prepare_caption, prepare_labels
from djray.ops.text.validate import Fallback, validate_output

log = logging.getLogger(__name__)

TEXT_FALLBACK_REASON = S.TEXT_FALLBACK_REASON  # "_text_fallback_reason"
CACHE_SIZE = 65536
_TRAILING = " .,;:!?\u2026"


def concat_caption(norm: str, labels: list[str]) -> str:
    """The `concat` ablation: normalised caption, trailing sentence punctuation dropped, then ", " + each label."""
    base = norm.rstrip(_TRAILING)
    return ", ".join(([base] if base else []) + labels)


def evidence_labels(value: list[str] | None) -> list[str]:
    """Non-empty, normalised, case-insensitively de-duplicated labels of one row (order kept)."""
    out, seen = [], set()
    for label in value or []:
        t = normalize(label) if isinstance(label, str) else None
        if t and t.casefold() not in seen:
            seen.add(t.casefold())
            out.append(t)
    return out


class TextRewriteOp(Op):
    name: ClassVar[str] = "text_rewrite"
    stage: ClassVar[str] = S.Stage.TEXT
    reads: ClassVar[tuple[str, ...]] = (S.CAPTION_RAW, S.VIS_EVIDENCE, S.REJECT_REASON)
    optional_reads: ClassVar[tuple[str, ...]] = (S.VIS_EVIDENCE,)
    writes: ClassVar[tuple[str, ...]] = (S.CAPTION, S.CAPTION_SOURCE, TEXT_FALLBACK_REASON)

    def __init__(self, params: TextParams | None = None, resources: Resources | None = None, engine: Any = None,
                 engine_options: dict[str, Any] | None = None):
        params = params or TextParams(mode="text_only")
        r = params.resources
        super().__init__(params, resources or r.for_op(params.batch_size))
        self.params: TextParams = params
        self.stateful = params.uses_engine  # an actor pool only when an LLM is loaded / a client pool is kept
        self.engine = engine  # a ready engine (tests, benchmarks); else built in setup()
        self.engine_options = dict(engine_options or {})
        self.template: PromptTemplate | None = None
        self._cache: OrderedDict[str, tuple[str | None, str | None]] = OrderedDict()
        self.stats: Counter = Counter()
        self._warned_no_evidence = False

    # ---- lifecycle --------------------------------------------------------------------------------------------
    def setup(self) -> None:
        if self.params.mode in LLM_MODES and self.template is None:
            self.template = load_template(self.params.prompt)
        if self.params.uses_engine and self.engine is None:
            self.engine = build_engine(self.params, **self.engine_options)

    def close(self) -> None:
        if self.engine is not None and hasattr(self.engine, "close"):
            self.engine.close()

    def describe(self) -> dict[str, Any]:
        """What the manifest records: mode, engine, model, prompt version + sha256 (null when no LLM is used)."""
        p = self.params
        out: dict[str, Any] = {"op": self.name, "mode": p.mode, "engine": p.engine if p.uses_engine else None,
                               "model": p.model if p.uses_engine else None, "prompt_version": None,
                               "prompt_sha256": None, "params": p.model_dump(mode="json")}
        if p.uses_engine:
            template = self.template or load_template(p.prompt)
            out.update(template.describe())
        if self.engine is not None and hasattr(self.engine, "describe"):
            out["engine_info"] = self.engine.describe()
        return out

    # ---- batch ------------------------------------------------------------------------------------------------
    def __call__(self, batch: pa.Table) -> dict[str, Any]:
        p, n = self.params, batch.num_rows
        alive = alive_mask(batch)
        raw = batch.column(S.CAPTION_RAW).to_pylist()
        has_ev = S.VIS_EVIDENCE in batch.column_names and p.evidence == "vision"
        ev = batch.column(S.VIS_EVIDENCE).to_pylist() if has_ev else None
        if not has_ev and p.evidence == "vision" and p.mode in ("rewrite", "concat") and not self._warned_no_evidence:
            log.warning("text.mode %s without a %s column (no vision head): every row is handled as text_only",
                        p.mode, S.VIS_EVIDENCE)
            self._warned_no_evidence = True
        caption: list[str | None] = [None] * n
        source: list[str | None] = [None] * n
        reason: list[str | None] = [None] * n
        jobs: list[tuple[int, str, list[str]]] = []
        for i in np.flatnonzero(alive):
            r = raw[i]
            if p.mode == "none":
                caption[i], source[i] = r, "original"
                continue
            norm = normalize(r)
            if not norm:
                caption[i], source[i], reason[i] = r, "original", Fallback.EMPTY_INPUT
                continue
            src0 = "original" if norm == r else "normalized"
            labels = evidence_labels(ev[i]) if ev is not None else []
            caption[i], source[i] = norm, src0
            if p.mode == "concat":
                if labels:
                    caption[i], source[i] = concat_caption(norm, labels), "concat"
                else:
                    reason[i] = Fallback.NO_EVIDENCE
            elif p.uses_engine:
                if p.mode == "rewrite" and not labels:
                    reason[i] = Fallback.NO_EVIDENCE
                jobs.append((i, norm, labels if p.mode == "rewrite" else []))
        if jobs:
            self._rewrite(jobs, caption, source, reason)
        self.stats.update(s for s in source if s is not None)
        self.stats.update(f"fallback:{x}" for x in reason if x is not None)
        return {
            S.CAPTION: pa.array(caption, type=pa.string()),
            S.CAPTION_SOURCE: pa.array(source, type=pa.string()),
            TEXT_FALLBACK_REASON: pa.array(reason, type=pa.string()),
        }

    def _rewrite(self, jobs, caption, source, reason) -> None:
        if self.engine is None or self.template is None:
            self.setup()
        t = self.template
        prompts: dict[str, tuple[list[dict[str, str]], str, list[str]]] = {}
        rows_by_key: dict[str, list[int]] = {}
        for i, norm, labels in jobs:
            inner, prepared = prepare_caption(norm), prepare_labels(labels)
            # the prompt is a function of (template, inner, labels): key on those, not on the rendered text
            key = hashlib.sha1("\x1f".join([inner, *prepared]).encode("utf-8")).hexdigest()
            rows_by_key.setdefault(key, []).append(i)
            if key not in prompts:
                prompts[key] = (messages_for(t, inner, prepared), inner, prepared)
        results: dict[str, tuple[str | None, str | None]] = {}
        todo = []
        for key in prompts:
            if key in self._cache:
                self._cache.move_to_end(key)
                results[key] = self._cache[key]
                self.stats["cache_hits"] += 1
            else:
                todo.append(key)
        bs = self.params.batch_size
        for start in range(0, len(todo), bs):
            keys = todo[start:start + bs]
            outs = self.engine.generate([prompts[k][0] for k in keys])
            if len(outs) != len(keys):
                raise EngineUnavailable(f"text engine returned {len(outs)} outputs for {len(keys)} prompts")
            errors = sum(o is None for o in outs)
            if errors > 1 and errors * 2 > len(keys):
                raise EngineUnavailable(f"text engine failed {errors} of {len(keys)} requests of one batch "
                                        "(see the engine's warnings): not writing fallback captions for all of them")
            for k, out in zip(keys, outs):
                if out is None:
                    results[k] = (None, Fallback.ENGINE_ERROR)
                    continue
                _, given, labels = prompts[k]
                results[k] = validate_output(out, given, labels, t, truncated=isinstance(out, Truncated))
                self._cache[k] = results[k]
                if len(self._cache) > CACHE_SIZE:
                    self._cache.popitem(last=False)
            self.stats["engine_requests"] += len(keys)
        for key, rows in rows_by_key.items():
            text, code = results[key]
            for i in rows:
                if text is not None:
                    caption[i], source[i] = text, "rewrite"
                else:  # caption[i] already holds the normalised caption
                    source[i], reason[i] = "fallback", code
