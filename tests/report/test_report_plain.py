"""The report of an output without vision columns: text normalisation and exact_dedup only; and the CLI."""

from __future__ import annotations

from collections import Counter

import pyarrow.parquet as pq
import yaml

from report_page import check_page, decode
from djray import cli
from djray.report import Output, write_report
from djray.report.build import funnel_stages
from djray.report.stats import collect


def _rows(out, kind):
    return [r for f in sorted((out / kind).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def test_report_without_vision(plain_output, tmp_path):
    out, manifest, facts = plain_output
    path = write_report(str(out), str(tmp_path / "r.html"), samples=5)
    html = open(path, encoding="utf-8").read()
    page = check_page(html)
    text = page.all_text
    m = manifest
    assert m["rejected_by_reason"] == {"truncated_image": 1, "duplicate_image": 1, "duplicate_key": 1,
                                       "empty_caption": 1}
    assert f"rows in {m['rows_in']:,} = kept {m['rows_kept']:,} + rejected {m['rows_rejected']:,}: holds" in text
    # one block of examples per (stage, reason), in the order the stages ran
    heads = page.within("h3")
    blocks = [h for h in heads if " · " in h]
    assert blocks == ["decode · empty_caption", "decode · truncated_image", "sieve:key_dedup · duplicate_key",
                      "sieve:exact_dedup · duplicate_image"]
    # a deduplicated row is shown next to the row that was kept instead
    copy, original = facts["copy"]
    alts = [alt for _, alt in page.images]
    assert ("dropped " + copy) in alts and ("twin " + original) in alts
    assert f"kept: {original}" in text
    assert "twin a1" in [alt for _, alt in page.images]  # the first a1 (kept) beside the repeated key
    # kept samples: the original image (no vision), captions with the normaliser's edits marked
    samples = [alt for _, alt in page.images if alt.startswith("sample ")]
    assert len(samples) == 5
    assert "no vision evidence" in text and "kept patches per image" not in text and "no models ran" in text
    # the funnel ends at the kept rows
    assert funnel_stages(m)[-1] == ("sieve:exact_dedup", m["rows_kept"])


def test_captions_and_details_are_escaped(plain_output, tmp_path):
    out, manifest, _ = plain_output
    html = open(write_report(str(out), str(tmp_path / "all.html"), samples=100)).read()
    page = check_page(html)
    assert len([a for _, a in page.images if a.startswith("sample ")]) == manifest["rows_kept"]  # all kept rows
    assert "<script" not in html.lower() and "onerror" not in html.replace("onerror=alert(2)&gt;", "")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # shown as text
    # the normaliser's edits marked in the diff: the HTML entity removed, the character added
    assert any("&amp;" in d for d in page.within("del")) and "&" in page.within("ins")


def test_streamed_statistics_match_the_files(plain_output):
    out, manifest, _ = plain_output
    st = collect(Output(str(out)), batch_rows=3)  # batches smaller than a row group
    data = _rows(out, "data")
    # no signal column to summarise without vision, clip or published columns: signals/ is not read at all
    assert st.rows == {"data": manifest["rows_kept"], "signals": 0}
    assert st.ints["caption words before (raw, kept rows)"] == Counter(len(r["caption_raw"].split()) for r in data)
    assert st.ints["caption words after (governed)"] == Counter(len(r["caption"].split()) for r in data)
    assert not st.floats and "evidence classes" not in st.labels
    # --stat-files 1: the histograms come from one data file (the first of an evenly spread pick), and say so
    one = Output(str(out), stat_files=1)
    first = pq.read_table(sorted((out / "data").glob("*.parquet"))[0])
    assert collect(one).rows["data"] == first.num_rows < manifest["rows_kept"]


def test_cli_report_and_run(plain_output, tmp_path, capsys):
    out, _, _ = plain_output
    assert cli.main(["report", str(out), "--html", str(tmp_path / "cli.html"), "--samples", "2",
                     "--stat-files", "1"]) == 0
    page = check_page((tmp_path / "cli.html").read_text(encoding="utf-8"))
    assert "Statistics over 1 of 2 signals files and 1 of 2 data files" in page.all_text
    assert len([a for _, a in page.images if a.startswith("sample ")]) == 2
    assert cli.main(["report", str(tmp_path / "no-such-output")]) == cli.EXIT_CONFIG
    assert "no manifest.json" in capsys.readouterr().err

    # `djray run` says how to get the report; with `report: true` it writes OUTPUT/report.html itself
    raw = {"input": {"path": str(out.parent / "in"), "format": "webdataset"}, "output": {"path": str(tmp_path / "o")}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(raw))
    assert cli.main(["run", str(tmp_path / "job.yaml"), "--no-progress"]) == 0
    assert f"djray report {tmp_path / 'o'}" in capsys.readouterr().out
    assert not (tmp_path / "o" / "report.html").exists()
    assert cli.main(["run", str(tmp_path / "job.yaml"), "--no-progress", "--set", "report=true"]) == 0
    assert str(tmp_path / "o" / "report.html") in capsys.readouterr().out
    check_page((tmp_path / "o" / "report.html").read_text(encoding="utf-8"))


def test_samples_zero_reads_no_images(plain_output, tmp_path):
    out, _, _ = plain_output
    page = check_page(open(write_report(str(out), str(tmp_path / "z.html"), samples=0, per_reason=0)).read())
    assert not [a for _, a in page.images if a.startswith(("sample ", "dropped ", "twin "))]
    assert all(decode(src).format == "PNG" for src, _ in page.images)  # only the plots remain
