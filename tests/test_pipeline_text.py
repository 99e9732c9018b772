"""The text branch end to end: the LLM sees only kept rows, outputs are validated, outages fail resumably."""

from __future__ import annotations

import json

import corpus
import pyarrow.parquet as pq
import pytest

from djray import pipeline
from djray.config import parse_config

CAPTIONS = ["a red circle on stripes", "two blue squares near a tree", "a green triangle at night",
            "an orange star over water", "a yellow ellipse and a cat", "a purple diamond on grass"]


def _corpus(tmp_path):
    # shard a: 4 good rows, one empty caption (rejected at decode); shard b: one duplicate of a's first key
    a = []
    for i, cap in enumerate(CAPTIONS[:4]):
        a += corpus.sample_members(f"a{i}", cap)
    a += corpus.sample_members("a-empty", "   ")
    b = corpus.sample_members("a0", "a duplicate that must never reach the LLM")
    for i, cap in enumerate(CAPTIONS[4:]):
        b += corpus.sample_members(f"b{i}", cap)
    corpus.write_tar(tmp_path / "in" / "a.tar", a)
    corpus.write_tar(tmp_path / "in" / "b.tar", b)
    return tmp_path / "in"


def _rows(out, kind="data"):
    return [r for f in sorted((out / kind).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def _config(tmp_path, text):
    return parse_config({"input": {"path": str(_corpus(tmp_path)), "format": "webdataset"},
                         "output": {"path": str(tmp_path / "out")}, "text": text})


def test_openai_rewrite_sees_only_kept_rows(ray_cluster, tmp_path, llm, monkeypatch):
    monkeypatch.setenv("DJRAY_TEST_KEY", "sk-never-logged")
    cfg = _config(tmp_path, {"mode": "rewrite", "evidence": "none", "engine": "openai", "model": "tiny",
                             "endpoint": llm.endpoint,
                             "api_key_env": "DJRAY_TEST_KEY", "resources": {"pool_size": 1}})
    manifest = pipeline.run(cfg, progress=False, log=lambda m: None)
    assert manifest["rejected_by_reason"] == {"duplicate_key": 1, "empty_caption": 1}
    assert sorted(llm.captions) == sorted(CAPTIONS)  # each kept row once; no rejected or duplicate row
    data = _rows(tmp_path / "out")
    assert len(data) == manifest["rows_kept"] == 6
    for r in data:
        assert r["caption"] == f"A photo of {r['caption_raw']}" and r["caption_source"] == "rewrite"
    assert manifest["caption_source"] == {"rewrite": 6}
    rejects = _rows(tmp_path / "out", "rejects")
    assert all(r["caption"] == r["caption_raw"] and r["caption_source"] == "original" for r in rejects)
    assert manifest["models"]["text"]["prompt_sha256"]
    assert "sk-never-logged" not in (tmp_path / "out" / "manifest.json").read_text()


def test_engine_outage_fails_cleanly_and_resumes(ray_cluster, tmp_path, llm, monkeypatch):
    monkeypatch.setenv("DJRAY_TEST_KEY", "k")
    llm.fail = True
    cfg = _config(tmp_path, {"mode": "rewrite", "evidence": "none", "engine": "openai", "model": "tiny",
                             "endpoint": llm.endpoint,
                             "api_key_env": "DJRAY_TEST_KEY", "max_retries": 1, "timeout_s": 2})
    with pytest.raises(pipeline.JobError):
        pipeline.run(cfg, progress=False, log=lambda m: None)
    out = tmp_path / "out"
    assert not list((out / "data").glob("*.parquet")) if (out / "data").exists() else True  # nothing final
    assert json.loads((out / "manifest.json").read_text())["status"] == "incomplete"

    llm.fail = False
    manifest = pipeline.run(cfg, progress=False, log=lambda m: None)
    assert manifest["status"] == "complete" and manifest["caption_source"] == {"rewrite": 6}
    assert all(r["caption"] for r in _rows(out))


def test_concat_and_text_only_need_no_llm(ray_cluster, tmp_path):
    cfg = _config(tmp_path, {"mode": "text_only"})
    manifest = pipeline.run(cfg, progress=False, log=lambda m: None)
    assert manifest["rows_kept"] == 6 and manifest["models"] == {}
    assert {r["caption"] for r in _rows(tmp_path / "out")} == set(CAPTIONS)


def test_transformers_engine_in_the_pipeline(ray_cluster, tmp_path, tiny_lm_dir):
    cfg = _config(tmp_path, {"mode": "text_only", "engine": "transformers", "model": tiny_lm_dir,
                             "max_new_tokens": 12, "batch_size": 4})
    manifest = pipeline.run(cfg, progress=False, log=lambda m: None)
    data = _rows(tmp_path / "out")
    assert len(data) == 6
    # a random LM writes gibberish: the validator must catch it and keep the normalised caption
    for r in data:
        assert r["caption"] and r["caption_source"] in {"rewrite", "fallback"}
        if r["caption_source"] == "fallback":
            assert r["caption"] == r["caption_raw"]
    assert sum(manifest["caption_source"].values()) == 6
    assert sum(manifest["text_fallback_by_reason"].values()) >= manifest["caption_source"].get("fallback", 0)
