"""Report statistics against independent NumPy computations, and the caption word diff."""

from __future__ import annotations

import math
from html.parser import HTMLParser

import numpy as np
import pyarrow as pa

from djray.report.render import word_diff
from djray.report.stats import Reservoir, entropy


def _entropy_ref(scores: list[float]) -> float:
    p = np.array(scores, np.float64) / sum(scores)
    return float(-sum(x * math.log(x) for x in p if x > 0) / math.log(len(scores)))


def test_entropy_matches_the_definition_row_by_row():
    rng = np.random.default_rng(0)
    rows = [rng.random(rng.integers(2, 40)).tolist() for _ in range(50)]
    rows += [[1.0] + [0.0] * 15, [0.25] * 4]  # all mass on one patch (0), uniform (1)
    arr = pa.array(rows + [None, [0.7], []], pa.list_(pa.float32()))  # null, 1 patch, empty: skipped
    got = entropy(arr.slice(0))
    want = [_entropy_ref(r) for r in rows]
    assert got.shape == (len(rows),)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert abs(got[-2]) < 1e-9 and abs(got[-1] - 1) < 1e-9
    # a slice of a list array (batches from a row group) gives the slice's rows
    np.testing.assert_allclose(entropy(arr.slice(10, 5)), want[10:15], rtol=1e-5)


def test_reservoir_is_exact_in_summary_and_bounded_in_sample():
    rng = np.random.default_rng(1)
    values = rng.normal(size=25_000)
    r = Reservoir(size=1000, seed=3)
    for chunk in np.array_split(values, 37):
        r.add(chunk)
    r.add(np.array([np.nan, np.inf]))  # not finite: not counted
    assert r.n == values.size and r.sample.size == 1000
    assert r.lo == values.min() and r.hi == values.max() and math.isclose(r.mean, values.mean(), abs_tol=1e-12)
    assert set(r.sample.tolist()) <= set(values.tolist())
    # a uniform sample: its mean and spread are those of the data within sampling error (8 sigma)
    assert abs(r.sample.mean() - values.mean()) < 8 / math.sqrt(1000) and 0.8 < r.sample.std() < 1.2
    small = Reservoir(size=100)
    small.add(values[:60])
    assert sorted(small.sample.tolist()) == sorted(values[:60].tolist())


class _Text(HTMLParser):
    def __init__(self):
        super().__init__()
        self.parts, self.tag = [], None

    def handle_starttag(self, tag, attrs):
        self.tag = tag

    def handle_endtag(self, tag):
        self.tag = None

    def handle_data(self, data):
        self.parts.append((self.tag, data))


def test_word_diff_marks_removed_and_added_words_and_escapes():
    html = word_diff("a <b>red</b> square &amp; circle", "a red square & circle")
    p = _Text()
    p.feed(html)
    deleted = " ".join(d for t, d in p.parts if t == "del")
    inserted = " ".join(d for t, d in p.parts if t == "ins")
    assert deleted == "<b>red</b> &amp;" and inserted == "red &"  # text as shown, after unescaping once
    assert "<b>" not in html and "&amp;amp;" in html
    assert word_diff("same words", "same words") == "same words"


def test_report_of_an_output_whose_run_never_finished_a_shard(tmp_path):
    """A manifest and nothing else (the first run failed before any shard was done): every section still renders."""
    import json

    from report_page import check_page
    from djray.report import write_report

    manifest = {"schema_version": 3, "djray_version": "x", "status": "incomplete", "config": {}, "models": {},
                "rows_in": 0, "rows_kept": 0, "rows_rejected": 0, "rejected_by_reason": {}, "rejected_by_stage": {},
                "selection": [], "accounting_ok": True, "shards_total": 2, "shards_done": 0, "error": "boom <b>",
                "shards": [{"shard": "a.tar", "status": "pending"}, {"shard": "b.tar", "status": "pending"}],
                "run": {"phases_s": {}}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    html = open(write_report(str(tmp_path))).read()
    page = check_page(html)
    assert (tmp_path / "report.html").exists()
    text = page.all_text
    assert "no kept rows to show" in text and "no rejected rows" in text and "error: boom <b>" in text
    assert "<b>" not in html.replace("<b>raw</b>", "")
    assert page.within("td").count("pending") == 2
