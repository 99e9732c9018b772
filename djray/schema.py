"""The data contract: every column name, type and reject reason djray writes is defined here and only here.

Other tools read these names (ARCHITECTURE §2). Bump SCHEMA_VERSION on any column change; tests/test_schema.py pins
the exact schema.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 3  # 2: img_sha256 in data/rejects; the signals store (signals/); sieve reject stages
# 3: clip columns (signals: clip_image_embedding, clip_text_embedding, clip_score; data: clip_score); k-means columns

# ---- governed row columns (data/) ------------------------------------------------------------------------------
KEY = "key"
SRC_SHARD = "src_shard"
SRC_INDEX = "src_index"
IMAGE = "image"
IMG_WIDTH = "img_width"
IMG_HEIGHT = "img_height"
CAPTION = "caption"
CAPTION_RAW = "caption_raw"
CAPTION_SOURCE = "caption_source"
SRC_JSON = "src_json"  # the sample's img2dataset .json member (or null), kept verbatim
IMG_SHA256 = "img_sha256"  # sha256 (hex) of the original encoded image bytes (exact dedup, source integrity)

PATCH_SIZE = "patch_size"
GRID_H = "grid_h"
GRID_W = "grid_w"
PATCH_SCORES = "patch_scores"
PATCH_IDX = "patch_idx"
VIS_CLASSES = "vis_classes"
VIS_EVIDENCE = "vis_evidence"
VIS_EMBEDDING = "vis_embedding"

CLIP_IMAGE_EMBEDDING = "clip_image_embedding"  # L2-normalised CLIP image embedding (signals only)
CLIP_TEXT_EMBEDDING = "clip_text_embedding"  # L2-normalised CLIP embedding of caption_raw (signals only)
CLIP_SCORE = "clip_score"  # cos(image, text) of the two embeddings above (signals and data)
VAS = "vas"  # vas sieve: f·S·f of the CLIP image embedding (published)
GAIN = "gain"  # infogrowth sieve: normalised information gain in [0, 1] (published; the trainer's samplers read it)
RECAPTION_SCORE = "recaption_score"  # infogrowth recaption: cos(CLIP image, CLIP text of the recaption) (published;
# null for rows that were not re-captioned or whose recaption failed validation)

# ---- reject columns (rejects/) ---------------------------------------------------------------------------------
STAGE = "stage"
REASON = "reason"
DETAIL = "detail"

# ---- internal columns: travel between stages, never written to data/ -------------------------------------------
# A row is alive while REJECT_REASON is null. Ops never drop rows; they set these three columns instead.
REJECT_STAGE = "_reject_stage"
REJECT_REASON = "_reject_reason"
REJECT_DETAIL = "_reject_detail"
SHARD_ORDER = "_shard_order"  # position of the shard in the sorted shard list (tie-break for duplicate keys)
SHARD_ROWS = "_shard_rows"  # set on the last row a reader emits for a shard: the shard's total row count
END_OF_SHARD = "_end_of_shard"  # reason on the one marker row (src_index -1) a reader emits after a shard's rows
PIXELS = "_pixels"  # canonical crop, uint8 (S, S, 3) C-order bytes, fixed_size_binary(S*S*3); only with vision
CLIP_PIXELS = "_clip_pixels"  # the same crop at CLIP's input size, when it differs from vision.image_size
TEXT_FALLBACK_REASON = "_text_fallback_reason"  # why the text branch kept the normalised caption (manifest counts)
CAPTION_INVALID_UTF8 = "_caption_invalid_utf8"  # reader saw caption bytes that are not UTF-8 (decoded with U+FFFD)
# infogrowth `recaption: true` (the selection's side files, never data/): the recaption of a low-alignment row, why
# it failed validation (a `djray.ops.text.validate.Fallback` code), and its L2-normalised CLIP text embedding
RECAPTION = "_recaption"
RECAPTION_CODE = "_recaption_code"
RECAPTION_EMBEDDING = "_recaption_embedding"

CAPTION_SOURCES = ("original", "normalized", "concat", "rewrite", "fallback")


class Reason:
    """Stable reject reason codes. Never rename one: manifests and dashboards count them."""

    # read stage
    UNSAFE_MEMBER_PATH = "unsafe_member_path"  # tar member name absolute or containing '..'
    CORRUPT_SHARD = "corrupt_shard"  # the rest of a tar/parquet shard could not be read
    MISSING_IMAGE = "missing_image"  # sample without an image member / null image cell
    MISSING_KEY = "missing_key"  # parquet row with a null or empty key
    BAD_SHARD_SCHEMA = "bad_shard_schema"  # parquet shard lacking a configured column (every row rejected)
    INVALID_KEY = "invalid_key"  # key not valid UTF-8 (e.g. a latin-1 tar member name)
    # decode stage
    CORRUPT_IMAGE = "corrupt_image"
    TRUNCATED_IMAGE = "truncated_image"
    UNSUPPORTED_FORMAT = "unsupported_format"
    DECOMPRESSION_BOMB = "decompression_bomb"
    IMAGE_TOO_SMALL = "image_too_small"
    EMPTY_CAPTION = "empty_caption"  # missing, empty or whitespace-only caption
    UNDECODABLE_CAPTION = "undecodable_caption"  # caption bytes are not valid UTF-8
    # vision stage
    MISSING_PIXELS = "missing_pixels"  # alive row without a canonical crop (a decode-stage contract breach)
    NONFINITE_SCORES = "nonfinite_scores"  # NaN/inf in the forward pass (e.g. fp16 overflow)
    NONFINITE_EMBEDDING = "nonfinite_embedding"  # clip stage: NaN/inf or zero-norm CLIP embedding
    # sieves (phase B, stage "sieve:<op>")
    DUPLICATE_KEY = "duplicate_key"  # key_dedup: the key was kept earlier by (shard order, index)
    DUPLICATE_IMAGE = "duplicate_image"  # exact_dedup: byte-identical image kept earlier by (shard order, index)
    NOT_SAMPLED = "not_sampled"  # random: outside the seeded sample
    LOW_CLIP_SCORE = "low_clip_score"  # clip_score: below min_score or outside the top keep_fraction
    CLUSTER_QUOTA = "cluster_quota"  # cluster: outside its cluster's quota (hash rank)
    SEMDEDUP_DUPLICATE = "semdedup_duplicate"  # semdedup / d4: near-duplicate of an earlier row of its cluster
    D4_PROTOTYPICAL = "d4_prototypical"  # d4: among the rows closest to their (fresh) centroid
    LOW_VAS = "low_vas"  # vas: outside the CLIP-score top, or outside the VAS top (detail says which)
    D2_NOT_SELECTED = "d2_not_selected"  # d2pruning: not picked by the reverse message passing
    INFOGROWTH_MISALIGNED = "infogrowth_misaligned"  # infogrowth: image-text alignment below δ
    INFOGROWTH_LOW_GAIN = "infogrowth_low_gain"  # infogrowth: outside the top keep_fraction by gain
    TLDR_NOT_SELECTED = "tldr_not_selected"  # tldr: not a stride member of its cluster, or outside the CLIP top


class Stage:
    READ = "read"
    DECODE = "decode"
    VISION = "vision"
    CLIP = "clip"
    TEXT = "text"

    @staticmethod
    def sieve(op: str) -> str:
        return f"sieve:{op}"


# ---- schemas ---------------------------------------------------------------------------------------------------
BASE_FIELDS = [
    pa.field(KEY, pa.string()),
    pa.field(SRC_SHARD, pa.string(), nullable=False),
    pa.field(SRC_INDEX, pa.int64(), nullable=False),
    pa.field(IMAGE, pa.binary()),
    pa.field(IMG_WIDTH, pa.int32()),
    pa.field(IMG_HEIGHT, pa.int32()),
    pa.field(CAPTION, pa.string()),
    pa.field(CAPTION_RAW, pa.string()),
    pa.field(CAPTION_SOURCE, pa.string()),
    pa.field(SRC_JSON, pa.string()),
    pa.field(IMG_SHA256, pa.string()),
]

# Vision columns that are signals (phase A, one forward per image) ...
VISION_SIGNAL_FIELDS = [
    pa.field(PATCH_SIZE, pa.int16()),
    pa.field(GRID_H, pa.int16()),
    pa.field(GRID_W, pa.int16()),
    pa.field(PATCH_SCORES, pa.list_(pa.float32())),
    pa.field(VIS_CLASSES, pa.list_(pa.struct([pa.field("label", pa.string()), pa.field("prob", pa.float32())]))),
    pa.field(VIS_EVIDENCE, pa.list_(pa.string())),
    pa.field(VIS_EMBEDDING, pa.list_(pa.float32())),
]
# ... and the one that is a selection (chosen in phase C from the stored scores: another ratio needs no GPU).
PATCH_IDX_FIELD = pa.field(PATCH_IDX, pa.list_(pa.int16()))
VISION_FIELDS = VISION_SIGNAL_FIELDS[:4] + [PATCH_IDX_FIELD] + VISION_SIGNAL_FIELDS[4:]

# CLIP columns (a `clip:` section): both embeddings are signals only; governed rows carry the score.
CLIP_SCORE_FIELD = pa.field(CLIP_SCORE, pa.float32())
CLIP_SIGNAL_FIELDS = [
    pa.field(CLIP_IMAGE_EMBEDDING, pa.list_(pa.float32())),
    pa.field(CLIP_TEXT_EMBEDDING, pa.list_(pa.float32())),
    CLIP_SCORE_FIELD,
]

REJECT_FIELDS = [
    pa.field(STAGE, pa.string(), nullable=False),
    pa.field(REASON, pa.string(), nullable=False),
    pa.field(DETAIL, pa.string()),
]

# Columns a sieve may publish (ARCHITECTURE §2: "the columns sieves publish such as clip_score, cluster_id, gain"):
# written to signals/ and data/ of the selection that computed them. A sieve's `writes` must name entries here.
# k-means sieves publish `cluster_id` / `cos_to_centroid`, prefixed by a tag (`semdedup_cluster_id`) when a
# selection runs more than one k-means; semdedup and d4 publish M (max cosine to an earlier row of the cluster in
# the sort order; null for a cluster's first row) and the earlier row it comes from.
KMEANS_TAGS = ("cluster", "semdedup", "d4_dedup", "d4")
NEAREST_TYPE = pa.struct([pa.field(KEY, pa.string()), pa.field(SRC_SHARD, pa.string()), pa.field(SRC_INDEX, pa.int64())])
PUBLISHED_FIELDS: dict[str, pa.DataType] = {
    **{f"{p}cluster_id": pa.int32() for p in ("", *(f"{t}_" for t in KMEANS_TAGS))},
    **{f"{p}cos_to_centroid": pa.float32() for p in ("", *(f"{t}_" for t in KMEANS_TAGS))},
    **{f"{op}_max_sim": pa.float32() for op in ("semdedup", "d4")},
    **{f"{op}_nearest": NEAREST_TYPE for op in ("semdedup", "d4")},
    VAS: pa.float32(),
    GAIN: pa.float32(),
    RECAPTION_SCORE: pa.float32(),
    "gain_raw": pa.float32(),
    "d2_score": pa.float32(),
    "tldr_cluster_id": pa.int32(),
    "tldr_itm": pa.bool_(),
}

# Columns every row carries between stages (source columns + bookkeeping), before any governance op adds its own.
SOURCE_FIELDS = [
    pa.field(KEY, pa.string()),
    pa.field(SRC_SHARD, pa.string()),
    pa.field(SRC_INDEX, pa.int64()),
    pa.field(SHARD_ORDER, pa.int64()),
    pa.field(IMAGE, pa.binary()),
    pa.field(CAPTION_RAW, pa.string()),
    pa.field(SRC_JSON, pa.string()),
    pa.field(CAPTION_INVALID_UTF8, pa.bool_()),
    pa.field(REJECT_STAGE, pa.string()),
    pa.field(REJECT_REASON, pa.string()),
    pa.field(REJECT_DETAIL, pa.string()),
    pa.field(SHARD_ROWS, pa.int64()),
]
SOURCE_SCHEMA = pa.schema(SOURCE_FIELDS)


def _published(names: tuple[str, ...]) -> list[pa.Field]:
    return [pa.field(n, PUBLISHED_FIELDS[n]) for n in names]


def data_schema(vision: bool = False, published: tuple[str, ...] = (), clip: bool = False) -> pa.Schema:
    """Schema of OUTPUT/data/*.parquet for a run with the given stages and sieve-published columns."""
    return pa.schema(BASE_FIELDS + (VISION_FIELDS if vision else []) + ([CLIP_SCORE_FIELD] if clip else [])
                     + _published(published))


def rejects_schema(vision: bool = False, published: tuple[str, ...] = (), clip: bool = False) -> pa.Schema:
    """Schema of OUTPUT/rejects/*.parquet: reject columns first, then every data column (null where unknown)."""
    return pa.schema(REJECT_FIELDS + list(data_schema(vision, published, clip)))


def signals_schema(vision: bool = False, published: tuple[str, ...] = (), clip: bool = False) -> pa.Schema:
    """Schema of OUTPUT/signals/*.parquet: every input row of a shard (kept or rejected in phase A), its reject triple
    from phase A (null while alive), and every signal a selection may read. Never image bytes."""
    fields = [
        pa.field(KEY, pa.string()),
        pa.field(SRC_SHARD, pa.string(), nullable=False),
        pa.field(SRC_INDEX, pa.int64(), nullable=False),
        pa.field(STAGE, pa.string()),
        pa.field(REASON, pa.string()),
        pa.field(DETAIL, pa.string()),
        pa.field(IMG_WIDTH, pa.int32()),
        pa.field(IMG_HEIGHT, pa.int32()),
        pa.field(IMG_SHA256, pa.string()),
        pa.field(CAPTION_RAW, pa.string()),
    ]
    return pa.schema(fields + (VISION_SIGNAL_FIELDS if vision else []) + (CLIP_SIGNAL_FIELDS if clip else [])
                     + _published(published))


def decision_schema(published: tuple[str, ...] = ()) -> pa.Schema:
    """A phase-B step's per-shard decision file: rows the step dropped (reason not null) and, when the step publishes
    columns, every row that reached it with their values."""
    return pa.schema([pa.field(SRC_INDEX, pa.int64(), nullable=False), pa.field(REASON, pa.string()),
                      pa.field(DETAIL, pa.string())] + _published(published))


def column_type(name: str) -> pa.DataType | None:
    """The contract's type of a column, or None for a name the contract does not define."""
    for f in SOURCE_FIELDS + BASE_FIELDS + VISION_FIELDS + CLIP_SIGNAL_FIELDS + REJECT_FIELDS:
        if f.name == name:
            return f.type
    return PUBLISHED_FIELDS.get(name)


# ---- Parquet footer metadata keys ------------------------------------------------------------------------------
META_SCHEMA_VERSION = b"djray.schema_version"
META_CONFIG_SHA256 = b"djray.config_sha256"
META_DJRAY_VERSION = b"djray.version"
META_GEOMETRY = b"djray.geometry"
META_SIGNALS_SHA256 = b"djray.signals_sha256"
META_SELECTION_SHA256 = b"djray.selection_sha256"
