"""infogrowth `recaption: true` end to end through `pipeline.run`: random-weight CLIP, an OpenAI-protocol stub server
on loopback as the text engine. The test first computes the signals (a run without recaption), then chooses, with
the same random CLIP text tower, a reply per low-alignment row that lands above δ (rescued), below δ (dropped) or
fails validation (dropped, detail says why); every assertion reads stored columns, none relies on luck."""

from __future__ import annotations

import hashlib
import json
import shutil
import time

import corpus
import numpy as np
import pyarrow.parquet as pq
import pytest
import ray

from djray import pipeline
from djray import schema as S
from djray.config import parse_config
from djray.ops.text.prompts import prepare_caption
from djray.sample_data import make_sample

pytestmark = pytest.mark.slow
N, QUANTILE = 12, 0.5
CLIP = {"weights": "random", "batch_size": 8, "resources": {"num_cpus": 0.5, "pool_size": 1}}
WORDS = ["sky", "forest", "tiger", "ocean", "city", "river", "snow", "desert", "flower", "bridge", "violin", "rocket",
         "garden", "castle", "storm", "candle", "mirror", "dragon", "train", "island"]
MARGIN = 2e-3  # between the test's CLIP forward and the actor's (batched) one


def _rows(out, kind):
    return [r for f in sorted((out / kind).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def _corpus(root) -> None:
    members = {"a": [], "b": []}
    for i in range(N):
        s = make_sample(i, seed=11)
        members["ab"[i % 2]] += corpus.sample_members(f"r{i:02d}", f"picture {i} of {s['caption']}", ext=s["ext"],
                                                      image=s["image"])
    for name, m in members.items():
        corpus.write_tar(root / f"{name}.tar", m)


def _config(tmp_path, recaption: bool, endpoint: str | None = None):
    raw = {"input": {"path": str(tmp_path / "in"), "format": "webdataset", "rows_per_block": 4},
           "output": {"path": str(tmp_path / "out")}, "clip": CLIP,
           "sieve": [{"op": "infogrowth", "align_quantile": QUANTILE, "recaption": recaption}]}
    if recaption:
        raw["text"] = {"mode": "rewrite", "evidence": "none", "engine": "openai", "model": "tiny",
                       "endpoint": endpoint, "api_key_env": "DJRAY_TEST_KEY", "max_retries": 1, "timeout_s": 5,
                       "resources": {"pool_size": 1}}
    return parse_config(raw)


def _seen(caption_raw: str) -> str:
    """A caption as the engine receives it (normalised, neutralised: the stub server records this)."""
    return prepare_caption(caption_raw)


def _text_tower():
    from djray._compat import patch_torchvision

    patch_torchvision()  # before open_clip: CUDA-linked torchvision wheels on CPU torch
    import open_clip
    import torch

    from djray.models.clip import build_clip

    model, _ = build_clip("ViT-B-16", "random")
    tokenizer = open_clip.get_tokenizer("ViT-B-16")

    def embed(texts: list[str]) -> np.ndarray:
        with torch.inference_mode():
            t = model.encode_text(tokenizer(texts)).float().numpy()
        return (t / np.linalg.norm(t, axis=1, keepdims=True)).astype(np.float32)

    return embed


def _plan_replies(signals: list[dict], delta: np.float32) -> dict[str, tuple[str, str]]:
    """{caption: (reply, expected fate)} for the rows below δ: one reply that fails validation, then replies whose
    align' (same random CLIP) is clearly above δ where one exists, else clearly below."""
    embed = _text_tower()
    low = sorted((r for r in signals if r[S.CLIP_SCORE] < delta), key=lambda r: r[S.KEY])
    plan = {_seen(low[0][S.CAPTION_RAW]): ("I'm sorry, I cannot help with that request.", "failed")}
    for r in low[1:]:
        cap = _seen(r[S.CAPTION_RAW])
        candidates = [cap] + [f"{cap} with a {a} and a {b}" for a in WORDS for b in WORDS[::3] if a != b]
        scores = embed(candidates) @ np.asarray(r[S.CLIP_IMAGE_EMBEDDING], np.float32)
        above = np.flatnonzero(scores >= delta + MARGIN)
        fate = "rescued" if above.size and len(plan) % 2 else "dropped"  # alternate where we can choose
        pick = above[0] if fate == "rescued" else int(np.argmin(scores))
        assert fate == "rescued" or scores[pick] < delta - MARGIN
        plan[cap] = (candidates[pick], fate)
    return plan


def _exact_gains(keys: list[str], img: np.ndarray, txt: np.ndarray, seed: int, k: int = 4) -> np.ndarray:
    """§6.3 with an exact kNN: rows in (blake2b(seed, key), key) order, each against the rows before it."""
    u = [int.from_bytes(hashlib.blake2b(f"{seed}\x1f{key}".encode(), digest_size=8).digest(), "little")
         for key in keys]
    order = sorted(range(len(keys)), key=lambda i: (u[i], keys[i]))
    unit = [x[order] / np.linalg.norm(x[order], axis=1, keepdims=True) for x in (img, txt)]
    raw = np.ones(len(keys))
    for t in range(1, len(keys)):
        raw[t] = np.mean([np.sort(1 - x[:t] @ x[t])[:min(t, k)].mean() for x in unit])
    out = np.empty(len(keys))
    out[order] = raw
    return out


def test_recaption_rescues_low_alignment_rows(ray_cluster, tmp_path, llm, monkeypatch):
    monkeypatch.setenv("DJRAY_TEST_KEY", "k")
    _corpus(tmp_path / "in")
    out = tmp_path / "out"
    pipeline.run(_config(tmp_path, False), progress=False, log=lambda m: None)  # the signals the plan is made from
    signals = _rows(out, "signals")
    align = np.array([r[S.CLIP_SCORE] for r in signals], np.float32)
    delta = np.sort(align)[int(np.floor(QUANTILE * N + 0.5))]  # the quantile's δ on the ORIGINAL aligns
    plan = _plan_replies(signals, delta)
    fates = [f for _, f in plan.values()]
    assert fates.count("rescued") >= 1 and fates.count("dropped") >= 1 and fates.count("failed") == 1
    llm.replies = {cap: reply for cap, (reply, _) in plan.items()}

    cfg = _config(tmp_path, True, llm.endpoint)
    manifest = pipeline.run(cfg, progress=False, log=lambda m: None)
    low = {_seen(r[S.CAPTION_RAW]) for r in signals if r[S.CLIP_SCORE] < delta}
    assert set(plan) == low
    rescued = {cap for cap, (_, f) in plan.items() if f == "rescued"}
    kept_high = {_seen(r[S.CAPTION_RAW]) for r in signals if r[S.CLIP_SCORE] >= delta}
    # the recaption pass saw exactly the rows below δ; the text branch then rewrote the other kept rows, not the
    # rescued ones (each caption reached the engine once)
    assert sorted(llm.captions) == sorted(low | kept_high)
    data, rejects = _rows(out, "data"), _rows(out, "rejects")
    assert manifest["accounting_ok"] and len(data) + len(rejects) == N
    assert {_seen(r[S.CAPTION_RAW]) for r in data} == kept_high | rescued
    for r in data:
        assert r[S.CAPTION_SOURCE] == "rewrite"
        if _seen(r[S.CAPTION_RAW]) in rescued:
            assert r[S.CAPTION] == plan[_seen(r[S.CAPTION_RAW])][0] and r[S.CLIP_SCORE] < delta
            assert r[S.RECAPTION_SCORE] >= delta  # the decision, checkable from stored columns
        else:
            assert r[S.CAPTION] == f"A photo of {_seen(r[S.CAPTION_RAW])}" and r[S.RECAPTION_SCORE] is None
            assert r[S.CLIP_SCORE] >= delta
    assert len(rejects) == len(low) - len(rescued)
    for r in rejects:
        assert r[S.STAGE] == "sieve:infogrowth" and r[S.REASON] == S.Reason.INFOGROWTH_MISALIGNED
        assert r[S.CAPTION] == r[S.CAPTION_RAW] and r[S.CAPTION_SOURCE] == "original"
        if plan[_seen(r[S.CAPTION_RAW])][1] == "failed":
            assert r[S.RECAPTION_SCORE] is None and r[S.DETAIL].endswith("the recaption failed validation (refusal)")
        else:
            assert r[S.RECAPTION_SCORE] < delta and "recaption alignment" in r[S.DETAIL]
    assert manifest["rejected_by_reason"] == {S.Reason.INFOGROWTH_MISALIGNED: len(low) - len(rescued)}
    clean = [s for s in manifest["selection"] if s["op"] == "infogrowth"][0]
    assert clean["delta"] == pytest.approx(float(delta)) and clean["cutoff"] == clean["delta"]
    assert clean["recaption"]["recaptioned"] == len(low) and clean["recaption"]["rescued"] == len(rescued)
    assert clean["recaption"]["failed"] == 1 and clean["recaption"]["failed_by_code"] == {"refusal": 1}
    # the gain step indexed a rescued row's recaption text embedding, not phase A's (exact kNN in the test)
    embed = _text_tower()
    sig = {r[S.KEY]: r for r in signals}
    kept = sorted(data, key=lambda r: r[S.KEY])
    img = np.array([sig[r[S.KEY]][S.CLIP_IMAGE_EMBEDDING] for r in kept], np.float64)
    txt0 = np.array([sig[r[S.KEY]][S.CLIP_TEXT_EMBEDDING] for r in kept], np.float64)
    txt = txt0.copy()
    for j, r in enumerate(kept):
        if _seen(r[S.CAPTION_RAW]) in rescued:
            txt[j] = embed([r[S.CAPTION]])[0]
    keys = [r[S.KEY] for r in kept]
    want, before = _exact_gains(keys, img, txt, cfg.sieve[0].seed), _exact_gains(keys, img, txt0, cfg.sieve[0].seed)
    got = np.array([r["gain_raw"] for r in kept])
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert np.abs(got - before).max() > 1e-3  # phase A's text embeddings would have given other gains

    calls = len(llm.captions)
    again = pipeline.run(cfg, progress=False, log=lambda m: None)  # the same command: nothing to redo
    assert len(llm.captions) == calls and again["rows_kept"] == manifest["rows_kept"]
    # a crash after the recaption pass but before the step's marker: the step is redone from the stored recaptions
    step_dir = out / "_djray" / "select" / pipeline.prepare(cfg).selection_context().steps[1].name
    marker = step_dir.with_name(step_dir.name + ".json")
    before = json.loads(marker.read_text())
    marker.unlink()
    redone = pipeline.run(cfg, progress=False, log=lambda m: None)
    assert len(llm.captions) == calls and redone["rejected_by_reason"] == manifest["rejected_by_reason"]
    after = json.loads(marker.read_text())
    assert after["recaption"] == before["recaption"] and after["dropped"] == before["dropped"]

    # an engine outage during the recaption pass fails the job, resumably; it never turns into drops
    marker.unlink()
    shutil.rmtree(step_dir / "recaption")
    shutil.rmtree(step_dir / "recaptioned")
    llm.fail = True
    with pytest.raises(pipeline.JobError) as failed:
        pipeline.run(cfg, progress=False, log=lambda m: None)
    assert json.loads((out / "manifest.json").read_text())["status"] == "incomplete"
    assert len(llm.captions) > calls and not marker.exists() and not list(step_dir.glob("recaptioned/*.json"))
    # ... and its actor pools give their CPU tokens back although its error is still held (here, and by pytest's log
    # capture; a notebook keeps the last error): a pool that outlives its run leaves the next run waiting forever
    assert failed.value is not None and _all_cpus_free_within(60), ray.available_resources()


def _all_cpus_free_within(seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources().get("CPU", 0):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True
