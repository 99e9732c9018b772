"""Ops from the config: which op each section becomes, in which phase, and the column contract between them.

Phase A ops see every row (read → decode → caption policy → vision); phase C's kept ops see only the rows the
selection kept (the text branch). `check_chain` enforces the op contract when the plan is built: an op that reads a
column nothing earlier writes is a configuration error, before any work.
"""

from __future__ import annotations

from djray import schema as S
from djray.config import ConfigError, JobConfig
from djray.ops.base import Op
from djray.ops.caption_check import CaptionCheckOp
from djray.ops.decode import DecodeOp, DecodeParams

SOURCE_COLUMNS = tuple(f.name for f in S.SOURCE_FIELDS)
RUNTIME_COLUMNS = (S.REJECT_STAGE, S.REJECT_REASON, S.REJECT_DETAIL)


def phase_a_ops(cfg: JobConfig) -> list[Op]:
    """Every row streams through these, in order; a row rejected by one is skipped by the later ones."""
    d, v, c = cfg.decode, cfg.vision, cfg.clip
    clip_op = None
    if c is not None:
        from djray.ops.vision.clip_embed import ClipEmbedder

        clip_op = ClipEmbedder(c, vision_image_size=v.image_size if v else None)
    ops: list[Op] = [
        DecodeOp(DecodeParams(max_pixels=d.max_pixels, min_side=d.min_side,
                              image_size=v.image_size if v else None,
                              clip_image_size=clip_op.size if clip_op and clip_op.pixels == S.CLIP_PIXELS else None)),
        CaptionCheckOp(d.caption),
    ]
    if v is not None:
        from djray.ops.vision.dino_patch import DinoPatchScorer

        ops.append(DinoPatchScorer(v))
    if clip_op is not None:
        ops.append(clip_op)
    check_chain("phase A", ops, SOURCE_COLUMNS)
    return ops


def kept_columns(cfg: JobConfig) -> tuple[str, ...]:
    """Signal columns the kept ops are given (besides key, src_shard, src_index and the reject columns)."""
    return (S.CAPTION_RAW,) + ((S.VIS_EVIDENCE,) if cfg.vision else ())


def kept_ops(cfg: JobConfig) -> list[Op]:
    """Ops that see only the rows still kept after the selection (the LLM never sees a dropped row)."""
    if cfg.text is None or cfg.text.mode == "none":
        return []
    from djray.ops.text.rewrite import TextRewriteOp

    ops: list[Op] = [TextRewriteOp(cfg.text)]
    check_chain("text", ops, (S.KEY, S.SRC_SHARD, S.SRC_INDEX, *RUNTIME_COLUMNS, *kept_columns(cfg)))
    return ops


def check_chain(phase: str, ops: list[Op], available: tuple[str, ...]) -> None:
    have = set(available)
    for op in ops:
        optional = set(getattr(op, "optional_reads", ()))
        missing = [c for c in op.reads if c not in have and c not in optional]
        if missing:
            raise ConfigError(f"{op.stage}: op {op.name} reads {missing}, which no earlier stage of {phase} writes")
        have.update(op.writes)
