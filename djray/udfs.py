"""djray's ops as Ray Data UDFs, for a user's own pipeline:

    decode = djray.udf("decode", feeds=[dino, clip])          # emits the crops the model ops read
    dino = djray.udf("dino_patch", weights="random", precision="fp32", ratio=0.5)
    ds = ray.data.read_parquet(...)                           # `image` bytes and `caption` (and, best, `key`)
    ds = ds.map_batches(decode, **decode.map_batches_kwargs())
    ds = ds.map_batches(dino, **dino.map_batches_kwargs())    # batch_format="pyarrow", ActorPoolStrategy, num_gpus

Names: `decode` (with the caption check), `dino_patch` (the class head when `head=` is given), `clip`,
`caption_rewrite`. Parameters are the keys of the matching config section (`decode`, `vision`, `clip`, `text`),
validated by the same typed config: a ConfigError names the key (`vision.ratio: ...`). A model op is a callable
class (Ray Data runs it in an actor pool: its model loads once per actor); `decode` and an engine-less
`caption_rewrite` are callable objects (Ray tasks). `.resources` / `.map_batches_kwargs()` suggest the section's
defaults (`resources:` and `batch_size` keys); every keyword of `map_batches` may override them.

Rows are never dropped: a row an op rejects comes back with `stage`, `reason`, `detail` (null while kept), and
later ops skip it. The output adds the op's contract columns (djray/schema.py), e.g. `patch_scores`, `patch_idx`,
`clip_score`; `_pixels` / `_clip_pixels` (the decoded crops) travel between decode and the model ops — drop them
before writing. Input: `image` (bytes) and `caption` (or `caption_raw`); `key` when present seeds the per-sample
patch strategies (else the image's sha256 does). `caption_rewrite` writes the governed `caption` and keeps the
original in `caption_raw`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel, ValidationError, create_model

from djray import schema as S
from djray.config import ConfigError, DecodeConfig, Section, _format_errors
from djray.ops.base import Op, Resources, apply_op_output, set_column
from djray.ops.text.params import TextParams
from djray.ops.vision.clip_embed import ClipParams
from djray.ops.vision.params import VisionParams

# udf name → (config section, its typed model)
SECTIONS: dict[str, tuple[str, type[BaseModel]]] = {
    "decode": ("decode", DecodeConfig), "dino_patch": ("vision", VisionParams), "clip": ("clip", ClipParams),
    "caption_rewrite": ("text", TextParams)}
PUBLIC_REJECT = {S.REJECT_STAGE: S.STAGE, S.REJECT_REASON: S.REASON, S.REJECT_DETAIL: S.DETAIL}
CROPS = (S.PIXELS, S.CLIP_PIXELS)


class OpUDF:
    """A callable over a pyarrow batch: user columns in, the same rows with the op's columns out."""

    op_name: ClassVar[str]
    section: ClassVar[BaseModel]
    crops: ClassVar[dict[str, int]] = {}  # decode: crop column → size
    resources: ClassVar[Resources]
    stateful: ClassVar[bool]

    def __init__(self) -> None:
        self.ops = build_ops(self.op_name, self.section, self.crops)
        for op in self.ops:
            op.setup()

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        work, added = to_internal(batch)
        alias = False
        for op in self.ops:
            if op.name == "clip_embed" and _shares_vision_crop(work, op.size):
                work, alias = set_column(work, S.CLIP_PIXELS, work.column(S.PIXELS)), True
            work = apply_op_output(work, op, op(work))
        assert work.num_rows == n, "an op dropped rows"
        return to_public(work.drop_columns([S.CLIP_PIXELS]) if alias else work, added)

    @classmethod
    def map_batches_kwargs(cls) -> dict[str, Any]:
        """Suggested `ds.map_batches` keywords: pyarrow batches, the section's batch size and resources, an actor
        pool for a model op. Resource keys the section leaves out are resolved against the running Ray cluster as
        `djray run` resolves them (djray/runtime/resources.py; Ray is started here if nothing has started it yet,
        as Ray Data would on first use)."""
        import ray

        r = cls.resources
        if cls.stateful:
            from djray.runtime.resources import TASK_CPUS, live_cluster, resolve

            if not ray.is_initialized():
                ray.init()
            op = build_ops(cls.op_name, cls.section, cls.crops)[-1]
            cluster = live_cluster(attached=True)
            r = resolve(op, cluster, cluster.cpus - TASK_CPUS)
        kwargs: dict[str, Any] = {"batch_format": "pyarrow", "num_cpus": r.num_cpus}
        if r.num_gpus:
            kwargs["num_gpus"] = r.num_gpus
        if cls.stateful:
            from djray.runtime.ray_data import actor_pool

            kwargs.update(compute=actor_pool(r), batch_size=r.batch_size)
        else:
            kwargs["batch_size"] = None  # whole blocks, fused into the read task by Ray Data
        return kwargs


def _shares_vision_crop(batch: pa.Table, size: int) -> bool:
    """CLIP reads `_clip_pixels`; decode made one crop for both when the vision crop has CLIP's size."""
    names = batch.column_names
    if S.CLIP_PIXELS in names or S.PIXELS not in names:
        return False
    t = batch.schema.field(S.PIXELS).type
    return pa.types.is_fixed_size_binary(t) and t.byte_width == size * size * 3


def udf(name: str, /, feeds: list[type[OpUDF] | OpUDF] | None = None, **params: Any) -> Any:
    """The op `name` as a Ray Data UDF with the config section's `params` (see the module docstring). `feeds`
    (decode only): the model UDFs this decode feeds, whose crop sizes it emits."""
    if name not in SECTIONS:
        raise ConfigError(f"udf: unknown op {name!r} (one of {', '.join(SECTIONS)})")
    section_name, model = SECTIONS[name]
    crops: dict[str, int] = {}
    if name == "decode":
        crops = _crop_sizes(feeds or [], params.pop("image_size", None), params.pop("clip_image_size", None))
    elif feeds:
        raise ConfigError(f"udf {name}: feeds= is a decode parameter")
    section = _validate(section_name, model, params)
    ops = build_ops(name, section, crops)  # built here too: its resources, and every error before Ray runs it
    stateful = any(op.stateful for op in ops)
    attrs = {"op_name": name, "section": section, "crops": crops, "resources": ops[-1].resources,
             "stateful": stateful, "__module__": __name__, "__doc__": f"djray op {name!r} as a Ray Data UDF"}
    cls = type(f"djray_{name}", (OpUDF,), attrs)
    return cls if stateful else cls()


def _validate(section: str, model: type[BaseModel], params: dict[str, Any]) -> BaseModel:
    one = create_model(f"_{section}", __base__=Section, **{section: (model, ...)})
    try:
        return getattr(one.model_validate({section: params}), section)
    except ValidationError as e:
        raise ConfigError(_format_errors(e)) from None


def _crop_sizes(feeds: list[Any], image_size: int | None, clip_image_size: int | None) -> dict[str, int]:
    from djray.ops.vision.clip_embed import clip_pixels_column

    for f in feeds:
        if f.op_name == "dino_patch":
            image_size = f.section.image_size
    for f in feeds:
        if f.op_name == "clip":
            column, size = clip_pixels_column(f.section, image_size)
            clip_image_size = size if column == S.CLIP_PIXELS else None
    return {c: s for c, s in ((S.PIXELS, image_size), (S.CLIP_PIXELS, clip_image_size)) if s is not None}


def build_ops(name: str, section: BaseModel, crops: dict[str, int]) -> list[Op]:
    if name == "decode":
        from djray.ops.caption_check import CaptionCheckOp
        from djray.ops.decode import DecodeOp, DecodeParams

        d = section
        return [DecodeOp(DecodeParams(max_pixels=d.max_pixels, min_side=d.min_side, image_size=crops.get(S.PIXELS),
                                      clip_image_size=crops.get(S.CLIP_PIXELS))), CaptionCheckOp(d.caption)]
    if name == "dino_patch":
        from djray.ops.vision.dino_patch import DinoPatchScorer

        return [DinoPatchScorer(section)]
    if name == "clip":
        from djray.ops.vision.clip_embed import ClipEmbedder

        return [ClipEmbedder(section)]  # reads `_clip_pixels`
    from djray.ops.text.rewrite import TextRewriteOp

    return [TextRewriteOp(section)]


def to_internal(batch: pa.Table) -> tuple[pa.Table, set[str]]:
    """The user's batch as the runtime's: the source columns the ops read, reject columns under internal names."""
    n, have = batch.num_rows, set(batch.column_names)
    added: set[str] = set()

    def add(t: pa.Table, name: str, values: Any) -> pa.Table:
        added.add(name)
        return set_column(t, name, values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values))

    for public, internal in ((S.STAGE, S.REJECT_STAGE), (S.REASON, S.REJECT_REASON), (S.DETAIL, S.REJECT_DETAIL)):
        col = batch.column(public).cast(pa.string()) if public in have else pa.nulls(n, pa.string())
        batch = add(batch, internal, col)
    if S.CAPTION_RAW not in have:
        batch = add(batch, S.CAPTION_RAW, batch.column(S.CAPTION).cast(pa.string()) if S.CAPTION in have
                    else pa.nulls(n, pa.string()))
    if S.KEY not in have:
        import hashlib

        images = batch.column(S.IMAGE).to_pylist() if S.IMAGE in have else [None] * n
        batch = add(batch, S.KEY, pa.array([hashlib.sha256(b).hexdigest() if b is not None else None
                                            for b in images], pa.string()))
    defaults = {S.SRC_SHARD: pa.array([""] * n, pa.string()), S.SRC_INDEX: pa.array(range(n), pa.int64()),
                S.CAPTION_INVALID_UTF8: pa.array([False] * n), S.IMAGE: pa.nulls(n, pa.binary())}
    for name, values in defaults.items():
        if name not in have:
            batch = add(batch, name, values)
    return batch, added


def to_public(batch: pa.Table, added: set[str]) -> pa.Table:
    """Back to the user's columns plus the op's: internal reject columns as `stage`/`reason`/`detail`, the helper
    columns `to_internal` added dropped (the decoded crops and a rewrite's `caption_raw` stay)."""
    for internal, public in PUBLIC_REJECT.items():
        batch = set_column(batch, public, batch.column(internal))
    keep_added = set(CROPS) | ({S.CAPTION_RAW} if S.CAPTION_SOURCE in batch.column_names else set())
    drop = [c for c in batch.column_names if c in PUBLIC_REJECT or (c in added and c not in keep_added)]
    return batch.drop_columns(drop)
