"""Embedding sieves end to end through `pipeline.run`: near-duplicate images (the same picture re-encoded at another
size and JPEG quality) dropped by semdedup on DINO embeddings, and the shipped Juicer × Sieve config with CLIP in
phase A, where the LLM must receive exactly the rows every sieve kept."""

from __future__ import annotations

import io
import re
from pathlib import Path

import corpus
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from djray import pipeline
from djray import schema as S
from djray.config import parse_config, read_yaml
from djray.sample_data import make_sample

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SMALL_VISION = {"model": "vit_small_patch16_224.dino", "weights": "random", "precision": "fp32", "batch_size": 8,
                "resources": {"num_cpus": 0.5, "pool_size": 1}}


def _reencoded(data: bytes, scale: float, quality: int) -> bytes:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    return corpus.enc(img.resize((int(img.width * scale), int(img.height * scale))), "JPEG", quality=quality)


def _near_duplicate_corpus(root: Path, distinct: int = 12, copies: int = 5) -> dict[str, str]:
    """`distinct` drawn scenes in two shards, plus re-encoded copies of the first `copies` ({copy key: original})."""
    members: dict[str, list] = {"a": [], "b": []}
    pairs = {}
    for i in range(distinct):
        s = make_sample(i, seed=3)
        members["a" if i % 2 else "b"] += corpus.sample_members(f"img{i:02d}", s["caption"], ext=s["ext"],
                                                                image=s["image"])
        if i < copies:
            members["b"] += corpus.sample_members(f"copy{i:02d}", s["caption"], image=_reencoded(s["image"], 0.8, 60))
            pairs[f"copy{i:02d}"] = f"img{i:02d}"
    for name, m in members.items():
        corpus.write_tar(root / f"{name}.tar", m)
    return pairs


def _rows(out: Path, kind: str) -> list[dict]:
    return [r for f in sorted((out / kind).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def _semdedup_run(corpus: Path, out: Path, rows_per_block: int) -> dict:
    cfg = parse_config({"input": {"path": str(corpus), "format": "webdataset", "rows_per_block": rows_per_block},
                        "output": {"path": str(out)}, "vision": SMALL_VISION,
                        "sieve": [{"op": "semdedup", "eps": 0.02, "n_clusters": 2, "embedding": "dino"}]})
    return pipeline.run(cfg, progress=False, log=lambda m: None)


def test_semdedup_on_dino_drops_reencoded_copies(ray_cluster, tmp_path):
    pairs = _near_duplicate_corpus(tmp_path / "in")
    manifest = _semdedup_run(tmp_path / "in", tmp_path / "out", 4)
    assert manifest["accounting_ok"] and manifest["rows_in"] == 17
    assert manifest["rejected_by_reason"] == {S.Reason.SEMDEDUP_DUPLICATE: 5}
    rejects = _rows(tmp_path / "out", "rejects")
    kept = {r[S.KEY] for r in _rows(tmp_path / "out", "data")}
    for r in rejects:  # one of each pair goes, and its detail names the other
        m = re.fullmatch(r"near-duplicate of key (\S+) \((\S+)#(\d+), cos (0\.\d{3}|1\.000)\)", r[S.DETAIL])
        assert m and r[S.STAGE] == "sieve:semdedup"
        twin = m.group(1)
        assert {r[S.KEY], twin} in [{c, o} for c, o in pairs.items()] and twin in kept
        assert float(m.group(4)) > 0.98 and m.group(2) in ("a.tar", "b.tar")
    signals = {r[S.KEY]: r for r in _rows(tmp_path / "out", "signals")}
    assert all(r["cluster_id"] is not None and r["cos_to_centroid"] is not None for r in signals.values())
    firsts = [r for r in signals.values() if r["semdedup_max_sim"] is None]
    assert 1 <= len(firsts) <= 2  # one row per cluster has no earlier row
    assert all(r["semdedup_max_sim"] <= 0.98 for r in signals.values()
               if r[S.KEY] in kept and r["semdedup_max_sim"] is not None)
    step = [s for s in manifest["selection"] if s["op"] == "semdedup"]
    assert [s["dropped"] for s in step] == [0, 5]  # the scan publishes M, the cut drops
    _semdedup_run(tmp_path / "in", tmp_path / "out7", 7)  # other blocks through phase A: the same decisions
    again = {(r[S.KEY], r[S.DETAIL]) for r in _rows(tmp_path / "out7", "rejects")}
    assert again == {(r[S.KEY], r[S.DETAIL]) for r in rejects}


def _juicer_corpus(root: Path) -> None:
    members = []
    for i in range(10):
        s = make_sample(i, seed=9)
        members += corpus.sample_members(f"r{i:02d}", f"caption number {i}: {s['caption']}", ext=s["ext"],
                                         image=s["image"])
    same = make_sample(0, seed=9)
    members += corpus.sample_members("r00-bytes", "an exact byte copy", ext=same["ext"], image=same["image"])
    members += corpus.sample_members("r01-near", "caption of a re-encoded copy",
                                     image=_reencoded(make_sample(1, seed=9)["image"], 0.7, 50))
    corpus.write_tar(root / "laion-000.tar", members)


def test_laion_juicer_x_sieve_rewrites_only_the_survivors(ray_cluster, tmp_path, llm, monkeypatch):
    monkeypatch.setenv("DJRAY_TEST_KEY", "k")
    _juicer_corpus(tmp_path / "in")
    raw = read_yaml(REPO / "configs" / "laion_juicer_x_sieve.yaml")
    raw["input"] = {"path": str(tmp_path / "in"), "format": "webdataset", "rows_per_block": 4}
    raw["output"] = {"path": str(tmp_path / "out")}
    raw.pop("storage")
    raw["vision"].update({**SMALL_VISION, "head": {"kind": "dino_linear", "weights": "random"}})
    raw["clip"].update(weights="random", precision="fp32", batch_size=8, resources={"num_cpus": 0.5, "pool_size": 1})
    raw["sieve"][2].update(n_clusters=2, embedding="dino", eps=0.02)  # random CLIP towers see no duplicates
    raw["text"].update(engine="openai", model="tiny", endpoint=llm.endpoint, api_key_env="DJRAY_TEST_KEY",
                       resources={"pool_size": 1})
    manifest = pipeline.run(parse_config(raw), progress=False, log=lambda m: None)
    out = tmp_path / "out"
    data, rejects = _rows(out, "data"), _rows(out, "rejects")
    assert manifest["accounting_ok"] and len(data) + len(rejects) == 12
    by_reason = manifest["rejected_by_reason"]
    assert by_reason[S.Reason.DUPLICATE_IMAGE] == 1 and by_reason[S.Reason.LOW_CLIP_SCORE] == 11 - int(0.7 * 11 + 0.5)
    assert sorted(llm.captions) == sorted(r["caption_raw"] for r in data)  # the LLM saw exactly the survivors
    assert all(r["caption_source"] == "rewrite" and r["patch_idx"] and r[S.CLIP_SCORE] is not None for r in data)
    assert S.CLIP_IMAGE_EMBEDDING not in pq.read_schema(next((out / "data").glob("*.parquet"))).names
    signals = _rows(out, "signals")
    emb = np.array([r[S.CLIP_IMAGE_EMBEDDING] for r in signals if r[S.CLIP_IMAGE_EMBEDDING] is not None])
    assert len(emb) == 12 and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    for r in signals:
        cos = float(np.dot(r[S.CLIP_IMAGE_EMBEDDING], r[S.CLIP_TEXT_EMBEDDING]))
        assert abs(cos - r[S.CLIP_SCORE]) < 1e-5
    clip = manifest["models"]["clip"]
    assert clip["preprocessing"]["source_column"] == S.PIXELS and clip["preprocessing"]["shared_with_vision"]
    assert clip["model"]["weights"] == "random" and clip["model"]["state_sha256"]
    assert manifest["models"]["vision"]["op"] == "dino_patch"


def test_governors_publish_gain_and_vas_to_data(ray_cluster, tmp_path):
    members = []
    for i in range(12):
        s = make_sample(i, seed=4)
        members += corpus.sample_members(f"g{i:02d}", s["caption"], ext=s["ext"], image=s["image"])
    corpus.write_tar(tmp_path / "in" / "g.tar", members)
    cfg = parse_config({
        "input": {"path": str(tmp_path / "in"), "format": "webdataset", "rows_per_block": 5},
        "output": {"path": str(tmp_path / "out")},
        "clip": {"weights": "random", "batch_size": 8, "resources": {"num_cpus": 0.5, "pool_size": 1}},
        "sieve": [{"op": "infogrowth", "align_quantile": 0.25},
                  {"op": "vas", "clip_fraction": 0.9, "vas_fraction": 0.5, "target": {"kind": "pool", "iterations": 2}}],
    })
    manifest = pipeline.run(cfg, progress=False, log=lambda m: None)
    data, rejects = _rows(tmp_path / "out", "data"), _rows(tmp_path / "out", "rejects")
    assert manifest["accounting_ok"] and len(data) + len(rejects) == 12
    assert manifest["rejected_by_reason"] == {S.Reason.INFOGROWTH_MISALIGNED: 3, S.Reason.LOW_VAS: 9 - 4}
    assert all(0.0 <= r[S.GAIN] <= 1.0 and r[S.VAS] is not None for r in data)
    assert {r[S.STAGE] for r in rejects} == {"sieve:infogrowth", "sieve:vas"}
    vas = [s for s in manifest["selection"] if s["op"] == "vas"][0]
    assert vas["describe"]["pool"] == 9 and vas["describe"]["n_clip"] == 8 and vas["describe"]["n_vas"] == 4
