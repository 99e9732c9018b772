"""Pin the data contract. Changing a column means bumping SCHEMA_VERSION and updating this test on purpose."""

from __future__ import annotations

import pyarrow as pa

from djray import schema as S


def test_schema_version_is_pinned():
    assert S.SCHEMA_VERSION == 3


def test_data_schema_is_pinned():
    expected = [
        ("key", "string"), ("src_shard", "string"), ("src_index", "int64"), ("image", "binary"),
        ("img_width", "int32"), ("img_height", "int32"), ("caption", "string"), ("caption_raw", "string"),
        ("caption_source", "string"), ("src_json", "string"), ("img_sha256", "string"),
    ]
    assert [(f.name, str(f.type)) for f in S.data_schema()] == expected
    vision = [
        ("patch_size", "int16"), ("grid_h", "int16"), ("grid_w", "int16"), ("patch_scores", "list<item: float>"),
        ("patch_idx", "list<item: int16>"), ("vis_classes", "list<item: struct<label: string, prob: float>>"),
        ("vis_evidence", "list<item: string>"), ("vis_embedding", "list<item: float>"),
    ]
    assert [(f.name, str(f.type)) for f in S.data_schema(vision=True)] == expected + vision
    assert [(f.name, str(f.type)) for f in S.data_schema(vision=True, clip=True)] == expected + vision + [
        ("clip_score", "float")]


def test_rejects_schema_is_reject_columns_then_data_columns():
    names = S.rejects_schema().names
    assert names[:3] == ["stage", "reason", "detail"]
    assert names[3:] == S.data_schema().names
    assert S.rejects_schema().field("reason").type == pa.string()


def test_reason_codes_are_stable():
    codes = {v for k, v in vars(S.Reason).items() if k.isupper()}
    assert codes == {
        "unsafe_member_path", "corrupt_shard", "missing_image", "missing_key", "bad_shard_schema", "corrupt_image",
        "truncated_image", "unsupported_format", "decompression_bomb", "image_too_small", "empty_caption",
        "undecodable_caption", "duplicate_key", "invalid_key", "missing_pixels", "nonfinite_scores",
        "duplicate_image", "not_sampled", "nonfinite_embedding", "low_clip_score", "cluster_quota",
        "semdedup_duplicate", "d4_prototypical", "low_vas", "d2_not_selected", "infogrowth_misaligned",
        "infogrowth_low_gain", "tldr_not_selected",
    }


def test_internal_columns_are_never_contract_columns():
    contract = set(S.rejects_schema(vision=True).names)
    internal = {S.REJECT_STAGE, S.REJECT_REASON, S.REJECT_DETAIL, S.SHARD_ORDER, S.SHARD_ROWS, S.PIXELS, S.CLIP_PIXELS,
                S.CAPTION_INVALID_UTF8, S.TEXT_FALLBACK_REASON}
    assert all(name.startswith("_") for name in internal)
    assert not contract & internal


def test_signals_schema_is_pinned():
    expected = [
        ("key", "string"), ("src_shard", "string"), ("src_index", "int64"), ("stage", "string"), ("reason", "string"),
        ("detail", "string"), ("img_width", "int32"), ("img_height", "int32"), ("img_sha256", "string"),
        ("caption_raw", "string"),
    ]
    assert [(f.name, str(f.type)) for f in S.signals_schema()] == expected
    clip = [("clip_image_embedding", "list<item: float>"), ("clip_text_embedding", "list<item: float>"),
            ("clip_score", "float")]
    assert [(f.name, str(f.type)) for f in S.signals_schema(clip=True)] == expected + clip
    vision = [
        ("patch_size", "int16"), ("grid_h", "int16"), ("grid_w", "int16"), ("patch_scores", "list<item: float>"),
        ("vis_classes", "list<item: struct<label: string, prob: float>>"), ("vis_evidence", "list<item: string>"),
        ("vis_embedding", "list<item: float>"),
    ]
    assert [(f.name, str(f.type)) for f in S.signals_schema(vision=True)] == expected + vision
    # never image bytes, never the patch selection (chosen per selection in phase C)
    assert not {"image", "patch_idx", "src_json"} & set(S.signals_schema(vision=True).names)


def test_decision_schema_and_published_columns():
    assert S.decision_schema().names == ["src_index", "reason", "detail"]
    for name, type_ in S.PUBLISHED_FIELDS.items():
        assert S.column_type(name) == type_
        assert name in S.data_schema(published=(name,)).names and name in S.signals_schema(published=(name,)).names


def test_published_kmeans_columns_are_pinned():
    names = {n: str(t) for n, t in S.PUBLISHED_FIELDS.items()}
    for prefix in ("", "cluster_", "semdedup_", "d4_dedup_", "d4_"):
        assert names[f"{prefix}cluster_id"] == "int32" and names[f"{prefix}cos_to_centroid"] == "float"
    assert names["recaption_score"] == "float"  # infogrowth recaption: align' (null without a recaption)
    for op in ("semdedup", "d4"):
        assert names[f"{op}_max_sim"] == "float"
        assert names[f"{op}_nearest"] == "struct<key: string, src_shard: string, src_index: int64>"
