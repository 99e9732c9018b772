"""Governed outputs the report tests share (one pipeline run each per test session)."""

from __future__ import annotations

from pathlib import Path

import pytest

import corpus
from djray import pipeline
from djray.config import parse_config
from djray.sample_data import make_sample

SMALL_VISION = {"model": "vit_small_patch16_224.dino", "weights": "random", "precision": "fp32", "batch_size": 8,
                "resources": {"num_cpus": 0.5, "pool_size": 1},
                # random head: class probabilities ~1/1000, so a tiny threshold yields a few evidence classes
                "head": {"kind": "dino_linear", "weights": "random", "threshold": 0.0025, "top_k": 5}}


def _plain_corpus(root: Path) -> dict:
    """Two shards: drawn scenes, a corrupt image, an empty caption, a repeated key, a byte-identical image under
    another key, and captions text normalisation changes."""
    a, b = [], []
    for i in range(6):
        s = make_sample(i, seed=5)
        a += corpus.sample_members(f"a{i}", s["caption"], ext=s["ext"], image=s["image"])
    a += corpus.sample_members("a-corrupt", "a broken picture", image=b"\xff\xd8\xff\xe0 not a jpeg")
    a += corpus.sample_members("a-empty", "   ")
    b += corpus.sample_members("a1", "the same key again", image=corpus.image_bytes())
    s0 = make_sample(0, seed=5)
    b += corpus.sample_members("b-copy", "a byte copy of a0", ext=s0["ext"], image=s0["image"])
    b += corpus.sample_members("b-html", "<script>alert(1)</script> a red <img src=x onerror=alert(2)> square")
    for i in range(6, 10):
        s = make_sample(i, seed=5)
        b += corpus.sample_members(f"b{i}", f"  {s['caption']}  &amp;  more  ", ext=s["ext"], image=s["image"])
    corpus.write_tar(root / "a.tar", a)
    corpus.write_tar(root / "b.tar", b)
    return {"copy": ("b-copy", "a0"), "dup_key": "a1"}


@pytest.fixture(scope="session")
def plain_output(ray_cluster, tmp_path_factory):
    """No vision, text normalisation only, exact_dedup: (output dir, manifest, facts about the corpus)."""
    root = tmp_path_factory.mktemp("report-plain")
    facts = _plain_corpus(root / "in")
    cfg = parse_config({"input": {"path": str(root / "in"), "format": "webdataset", "rows_per_block": 4},
                        "output": {"path": str(root / "out")}, "text": {"mode": "text_only"},
                        "sieve": [{"op": "exact_dedup"}]})
    manifest = pipeline.run(cfg, progress=False, log=lambda m: None)
    return root / "out", manifest, facts


@pytest.fixture(scope="session")
def vision_output(ray_cluster, tmp_path_factory):
    """Vision with a class head, semdedup on DINO embeddings, concat captions: (output dir, manifest, pairs)."""
    from test_pipeline_sieves import _near_duplicate_corpus

    root = tmp_path_factory.mktemp("report-vision")
    pairs = _near_duplicate_corpus(root / "in", distinct=10, copies=3)
    cfg = parse_config({"input": {"path": str(root / "in"), "format": "webdataset", "rows_per_block": 4},
                        "output": {"path": str(root / "out")}, "vision": SMALL_VISION,
                        "sieve": [{"op": "semdedup", "eps": 0.02, "n_clusters": 2, "embedding": "dino"}],
                        "text": {"mode": "concat"}})
    manifest = pipeline.run(cfg, progress=False, log=lambda m: None)
    return root / "out", manifest, pairs
