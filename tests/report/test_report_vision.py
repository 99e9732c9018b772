"""The report of an output with vision (class head), semdedup and concat captions: the greyed patches are the
dropped ones, the plots and tables follow the signals, a near-duplicate is shown beside the row kept instead."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest

from report_page import check_page, decode
from djray.geometry import canonical_crop, open_image
from djray.report import write_report

pytestmark = pytest.mark.slow


def _rows(out, kind):
    return [r for f in sorted((out / kind).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def test_report_with_vision_and_sieves(vision_output, tmp_path):
    out, manifest, pairs = vision_output
    page = check_page(open(write_report(str(out), str(tmp_path / "v.html"), samples=6, per_reason=3)).read())
    text = page.all_text
    assert manifest["rejected_by_reason"] == {"semdedup_duplicate": 3}
    for title in ("patch-score entropy", "kept patches per image", "evidence classes per image",
                  "cluster sizes: cluster_id", "caption words after (governed)"):
        assert any(alt.startswith(title) for _, alt in page.images), title
    # most frequent evidence classes: the table equals a count over the signals store
    signals = _rows(out, "signals")
    want = Counter(c for r in signals for c in (r["vis_evidence"] or []))
    assert want, "the test head threshold should let some classes through"
    table = page.within("td")
    top = want.most_common(1)[0]
    assert top[0] in table and f"{top[1]:,}" in table
    # the random-weights warning from the manifest
    assert "WARNING: vision vit_small_patch16_224.dino uses RANDOM weights" in text
    # each dropped near-duplicate beside the key the sieve kept
    alts = [alt for _, alt in page.images]
    for copy, original in pairs.items():
        pair = {f"dropped {copy}", f"twin {original}"}
        swapped = {f"dropped {original}", f"twin {copy}"}
        assert pair <= set(alts) or swapped <= set(alts), (copy, original)


def test_greyed_patches_are_the_dropped_ones(vision_output, tmp_path):
    out, _, _ = vision_output
    page = check_page(open(write_report(str(out), str(tmp_path / "g.html"), samples=4)).read())
    data = {r["key"]: r for r in _rows(out, "data")}
    shown = [(src, alt.removeprefix("sample ")) for src, alt in page.images if alt.startswith("sample ")]
    assert len(shown) == 4
    for src, key in shown:
        row = data[key]
        p, gh, gw = row["patch_size"], row["grid_h"], row["grid_w"]
        crop = canonical_crop(open_image(row["image"], 10**8), p * gh).astype(np.float64)
        shown_img = np.asarray(decode(src).convert("RGB"), np.float64)
        assert shown_img.shape == crop.shape
        kept = set(row["patch_idx"])
        assert 0 < len(kept) < gh * gw
        for i in range(gh * gw):
            r, c = divmod(i, gw)
            sl = (slice(r * p + 2, (r + 1) * p - 1), slice(c * p + 2, (c + 1) * p - 1))  # inside, off the grid lines
            if i in kept:  # as it was (JPEG error only)
                assert np.abs(shown_img[sl] - crop[sl]).mean() < 12, (key, i)
            else:  # pulled three quarters of the way to grey
                expect = 0.25 * crop[sl] + 0.75 * 128
                assert np.abs(shown_img[sl] - expect).mean() < 12, (key, i)
