"""clip_score against a NumPy reference written here from seed-algorithms §7.3 / §1.3: an exact global top-n
(n = round-half-up(f · pool); higher score first, then smaller key), or a per-row threshold."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import sieve_data as D

from djray import schema as S
from djray.config import ConfigError, parse_config
from djray.ops.sieve.clip_score import ClipScoreParams
from djray.ops.sieve.inprocess import run_sieves


@pytest.mark.parametrize("fraction", [0.001, 0.25, 0.5, 0.999])
def test_exact_top_fraction_with_key_tie_break(fraction):
    table = D.clustered(4001, seed=41)  # scores rounded to 2 decimals: every cut-off falls inside a tie
    out = run_sieves([ClipScoreParams(keep_fraction=fraction)], table)
    keys = out.column(S.KEY).to_pylist()
    score = out.column(S.CLIP_SCORE).to_numpy()
    n = int(np.floor(fraction * len(keys) + 0.5))
    order = sorted(range(len(keys)), key=lambda i: (-float(score[i]), keys[i]))
    assert sorted(D.kept_keys(out)) == sorted(keys[i] for i in order[:n])
    assert score[order[n - 1]] == score[order[n]]  # the tie at the cut-off was settled by key


def test_min_score_is_inclusive_and_exact_in_float32():
    t = np.float32(0.3)  # 0.3 is not a float32: 0.30000001192...
    scores = np.array([np.nextafter(t, np.float32(0)), t, np.nextafter(t, np.float32(1))], np.float32)
    table = pa.table({S.KEY: ["a", "b", "c"], S.CLIP_SCORE: scores})
    out = run_sieves([ClipScoreParams(min_score=0.3)], table)
    assert out.column("keep").to_pylist() == [float(s) >= 0.3 for s in scores]  # [False, True, True]
    out = run_sieves([ClipScoreParams(min_score=float(t))], table)
    assert out.column("keep").to_pylist() == [False, True, True]
    dropped = out.filter(pa.compute.invert(out.column("keep")))
    assert dropped.column("detail")[0].as_py().startswith("clip_score 0.3000 < min_score")
    assert dropped.column("reason")[0].as_py() == S.Reason.LOW_CLIP_SCORE


def test_exactly_one_rule():
    for bad in ({}, {"min_score": 0.2, "keep_fraction": 0.5}):
        with pytest.raises(ValueError, match="exactly one of min_score or keep_fraction"):
            ClipScoreParams(**bad)


def test_embedding_sieves_need_the_section_they_read():
    base = {"input": {"path": "/x", "format": "webdataset"}, "output": {"path": "/o"}}
    with pytest.raises(ConfigError, match=r"sieve\.0\.clip_score: reads clip_score, which needs a `clip:` section"):
        parse_config({**base, "sieve": [{"op": "clip_score", "min_score": 0.2}]})
    with pytest.raises(ConfigError, match=r"sieve\.1\.semdedup\.embedding: clip_image .* `clip:` section"):
        parse_config({**base, "vision": {}, "sieve": [{"op": "exact_dedup"},
                                                      {"op": "semdedup", "eps": 0.05, "embedding": "clip_image"}]})
    with pytest.raises(ConfigError, match=r"sieve\.0\.d4\.embedding: dino reads vis_embedding, .* `vision:`"):
        parse_config({**base, "clip": {"weights": "random"}, "sieve": [{"op": "d4", "keep_fraction": 0.5}]})
    cfg = parse_config({**base, "clip": {"weights": "random"},
                        "sieve": [{"op": "cluster", "keep_fraction": 0.5, "embedding": "clip_image"}]})
    assert [s.op for s in cfg.steps()] == ["key_dedup", "cluster"]


def test_two_kmeans_sieves_prefix_their_columns_and_one_alone_does_not():
    base = {"input": {"path": "/x", "format": "webdataset"}, "output": {"path": "/o"}, "vision": {}}
    one = parse_config({**base, "sieve": [{"op": "semdedup", "eps": 0.05}]})
    from djray.ops.sieve import build_sieve
    assert [build_sieve(p).writes for p in one.steps()[1:]] == [
        ("cluster_id", "cos_to_centroid", "semdedup_max_sim", "semdedup_nearest"), ()]
    two = parse_config({**base, "sieve": [{"op": "semdedup", "eps": 0.05}, {"op": "cluster", "keep_fraction": 0.5}]})
    writes = [c for p in two.steps() for c in build_sieve(p).writes]
    assert writes == ["semdedup_cluster_id", "semdedup_cos_to_centroid", "semdedup_max_sim", "semdedup_nearest",
                      "cluster_cluster_id", "cluster_cos_to_centroid"]
    assert all(c in S.PUBLISHED_FIELDS for c in writes)
    with pytest.raises(ConfigError, match="semdedup configured twice"):
        parse_config({**base, "sieve": [{"op": "semdedup", "eps": 0.05}, {"op": "semdedup", "eps": 0.1}]})
