"""Output shaping: projection defaults, column patches (every kept row exactly once), footer metadata."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from djray import schema as S
from djray.io.writer import AccountingError, apply_patches, evidence_histogram, footer_metadata, project


def _rows() -> pa.Table:
    return pa.table({S.SRC_INDEX: [0, 1, 2], S.KEY: ["a", "b", "c"], S.CAPTION_RAW: ["raw a", "raw b", "raw c"],
                     S.REASON: pa.array([None, "corrupt_image", None], pa.string())})


def test_project_fills_defaults_nulls_and_metadata():
    out = project(_rows(), S.data_schema(), {b"k": b"v"})
    assert out.schema.remove_metadata() == S.data_schema() and out.schema.metadata == {b"k": b"v"}
    assert out.column(S.CAPTION).to_pylist() == ["raw a", "raw b", "raw c"]  # no text branch: the source caption
    assert out.column(S.CAPTION_SOURCE).to_pylist() == ["original"] * 3
    assert out.column(S.IMAGE).null_count == 3


def test_patches_cover_every_kept_row_exactly_once():
    patch = pa.table({S.SRC_INDEX: [2, 0], S.CAPTION: ["new c", "new a"], S.CAPTION_SOURCE: ["rewrite", "fallback"]})
    out = apply_patches(_rows(), [patch], "s.tar")
    assert out.column(S.CAPTION).to_pylist() == ["new a", None, "new c"]
    assert out.column(S.CAPTION_SOURCE).to_pylist() == ["fallback", None, "rewrite"]
    with pytest.raises(AccountingError, match="2 kept rows, 1 patched"):
        apply_patches(_rows(), [patch.slice(0, 1)], "s.tar")
    with pytest.raises(AccountingError, match="no column patches"):
        apply_patches(_rows(), [], "s.tar")
    with pytest.raises(AccountingError):  # a patch for a rejected row is never silently applied
        apply_patches(_rows(), [pa.table({S.SRC_INDEX: [0, 1], S.CAPTION: ["x", "y"]})], "s.tar")


def test_footer_and_evidence_histogram():
    meta = footer_metadata("o" * 64, "1.2.3", {"image_size": 224}, "s" * 64)
    assert meta[S.META_SCHEMA_VERSION] == str(S.SCHEMA_VERSION).encode()
    assert meta[S.META_CONFIG_SHA256] == b"o" * 64 and meta[S.META_SIGNALS_SHA256] == b"s" * 64
    assert json.loads(meta[S.META_GEOMETRY]) == {"image_size": 224}
    assert S.META_CONFIG_SHA256 not in footer_metadata(None, "1.2.3", None)  # a sealed signals file
    data = pa.table({S.VIS_EVIDENCE: pa.array([[], ["cat"], ["cat", "dog"], None, ["x"]], pa.list_(pa.string()))})
    assert evidence_histogram(data) == {"0": 2, "1": 2, "2": 1}
