"""Labels and label prompt templates (djray.labels)."""

from __future__ import annotations

import pytest

from djray.labels import check_templates, read_labels


def test_packaged_imagenet_labels_in_index_order():
    labels = read_labels(None)
    assert len(labels) == 1000
    assert labels[0] == "tench" and labels[999] == "toilet tissue"


def test_labels_file_skips_blank_lines_and_refuses_an_empty_one(tmp_path):
    f = tmp_path / "labels.txt"
    f.write_text("cat\n\n  dog  \n")
    assert read_labels(str(f)) == ["cat", "dog"]
    f.write_text("\n \n")
    with pytest.raises(ValueError, match="no labels"):
        read_labels(str(f))


def test_templates_need_exactly_one_placeholder():
    assert check_templates(("a photo of a {}.",)) == ("a photo of a {}.",)
    with pytest.raises(ValueError, match="at least one"):
        check_templates(())
    with pytest.raises(ValueError, match="exactly one"):
        check_templates(("{} and {}",))
    with pytest.raises(ValueError, match="exactly one"):
        check_templates(("no placeholder",))
