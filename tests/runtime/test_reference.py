"""vas `target: {kind: reference, images: …}` end to end: the job embeds the reference images itself (a phase A of
their own, the job's CLIP op) and selects with S from them. Checked against S computed here from embeddings this
test makes by running the same open_clip model (random weights the test saves) over the same images in process,
and against a NumPy VAS written here from seed-algorithms §5."""

from __future__ import annotations

import io
from pathlib import Path

import corpus
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from djray import pipeline
from djray import schema as S
from djray._compat import patch_torchvision
from djray.config import ConfigError, parse_config
from djray.ops.sieve.vas_reference import read_reference
from djray.preflight import prepare
from djray.sample_data import make_sample

patch_torchvision()
torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

MODEL = "ViT-S-32"
REF_SIZES = [(64, 48), (40, 90), (120, 120), (50, 33), (77, 61)]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("w") / "clip.pt"
    torch.manual_seed(123)
    torch.save(open_clip.create_model(MODEL, pretrained=None).state_dict(), path)
    return path


def _reference_images(root: Path) -> list[bytes]:
    """Five PNG noise images of several shapes, plus an undecodable one and one below min_side (not embedded)."""
    good = [corpus.enc(corpus.noise(w, h, seed=50 + i), "PNG") for i, (w, h) in enumerate(REF_SIZES)]
    members = []
    for i, data in enumerate(good[:3]):
        members += corpus.sample_members(f"ref{i}", None, ext="png", image=data)
    members += corpus.sample_members("ref3-broken", None, ext="png", image=b"no image at all")
    members += corpus.sample_members("ref4-tiny", None, ext="png", image=corpus.enc(corpus.noise(20, 20), "PNG"))
    for i, data in enumerate(good[3:], start=3):
        members += corpus.sample_members(f"ref{i + 2}", None, ext="png", image=data)
    corpus.write_tar(root / "ref-000.tar", members)
    return good


def _crop(data: bytes, size: int) -> np.ndarray:
    """Shorter side → size (PIL bicubic), longer side max(size, round(long·size/short)), centre crop at floor."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    nw, nh = (size, max(size, round(h * size / w))) if w <= h else (max(size, round(w * size / h)), size)
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


def _embed_here(weights: Path, images: list[bytes]) -> np.ndarray:
    """The same model and weights, in this process, one forward over the images in their order (as the actor's
    one block), one torch thread (as the actor's)."""
    model = open_clip.create_model(MODEL, pretrained=None)
    model.load_state_dict(torch.load(weights))
    model.eval()
    cfg = model.visual.preprocess_cfg
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    x = torch.from_numpy(np.stack([_crop(b, 224) for b in images])).permute(0, 3, 1, 2).float().div_(255.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            out = model.encode_image((x - mean) / std).float().numpy()
    finally:
        torch.set_num_threads(threads)
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def _second_moment(e: np.ndarray) -> np.ndarray:
    g = e.astype(np.float64)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    return g.T @ g / len(g)


def _pool(root: Path, n: int = 12) -> None:
    members = []
    for i in range(n):
        s = make_sample(i, seed=11)
        members += corpus.sample_members(f"p{i:02d}", s["caption"], ext=s["ext"], image=s["image"])
    corpus.write_tar(root / "pool-000.tar", members)


def _config(tmp_path: Path, weights: Path, vas_fraction: float, **target) -> dict:
    return {"input": {"path": str(tmp_path / "pool"), "format": "webdataset", "rows_per_block": 16},
            "output": {"path": str(tmp_path / "out")},
            "clip": {"model": MODEL, "weights": f"file:{weights}", "precision": "fp32", "batch_size": 16,
                     "resources": {"num_cpus": 0.5, "pool_size": 1, "threads": 1}},
            "sieve": [{"op": "vas", "clip_fraction": 0.75, "vas_fraction": vas_fraction,
                       "target": {"kind": "reference", **target}}]}


def _rows(out: Path, kind: str) -> list[dict]:
    return [r for f in sorted((out / kind).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def _numpy_vas(signals: list[dict], s: np.ndarray, clip_fraction: float, vas_fraction: float) -> set[str]:
    n = len(signals)
    ranked = sorted(signals, key=lambda r: (-r[S.CLIP_SCORE], r[S.KEY]))[:int(n * clip_fraction)]
    x = np.array([r[S.CLIP_IMAGE_EMBEDDING] for r in ranked], np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    vas = np.einsum("ij,jk,ik->i", x, s, x).astype(np.float32)
    order = sorted(range(len(ranked)), key=lambda j: (-vas[j], ranked[j][S.KEY]))
    return {ranked[j][S.KEY] for j in order[:int(n * vas_fraction)]}


@pytest.mark.slow
def test_reference_images_are_embedded_once_and_select_as_numpy(ray_cluster, tmp_path, weights):
    good = _reference_images(tmp_path / "ref")
    _pool(tmp_path / "pool")
    logs: list[str] = []
    manifest = pipeline.run(parse_config(_config(tmp_path, weights, 0.5, images=str(tmp_path / "ref"))),
                            progress=False, log=logs.append)
    assert manifest["accounting_ok"] and manifest["rows_in"] == 12
    assert sum(": embedding 1 of 1 shard(s)" in m for m in logs) == 1
    step = [s for s in manifest["selection"] if s["op"] == "vas"][0]["describe"]
    report = step["embedding"]
    assert report["rows"] == 7 and report["embedded"] == 5 and not report["cached"]
    assert report["rejected_by_reason"] == {S.Reason.CORRUPT_IMAGE: 1, S.Reason.IMAGE_TOO_SMALL: 1}
    assert {e[S.KEY] for e in report["examples"]} == {"ref3-broken", "ref4-tiny"}
    # the reference images are no rows of the job
    rejects, data = _rows(tmp_path / "out", "rejects"), _rows(tmp_path / "out", "data")
    assert len(rejects) + len(data) == 12 and all(r[S.KEY].startswith("p") for r in rejects + data)

    ref_file = step["reference"]
    clip_record = manifest["models"]["clip"]["model"]
    meta = pq.read_schema(ref_file).metadata
    assert meta[b"djray.clip_model"] == MODEL.encode() and clip_record["state_sha256"].encode() in meta[b"djray.clip_weights"]
    assert step["checked"] == "model and weights" and step["reference_rows"] == 5
    s_here = _second_moment(_embed_here(weights, good))
    s_job, _ = read_reference(ref_file, MODEL)
    assert np.abs(s_job - s_here).max() < 1e-9

    signals = _rows(tmp_path / "out", "signals")
    assert {r[S.KEY] for r in data} == _numpy_vas(signals, s_here, 0.75, 0.5)
    assert len(data) == 6

    # a new selection over the same output: the reference set is found, not embedded again
    logs.clear()
    manifest = pipeline.run(parse_config(_config(tmp_path, weights, 0.25, images=str(tmp_path / "ref"))),
                            progress=False, log=logs.append)
    assert not any(": embedding " in m for m in logs) and sum("cached, 5 embeddings" in m for m in logs) == 1
    step = [s for s in manifest["selection"] if s["op"] == "vas"][0]["describe"]
    assert step["embedding"]["cached"] and step["reference"] == ref_file
    data = _rows(tmp_path / "out", "data")
    assert {r[S.KEY] for r in data} == _numpy_vas(signals, s_here, 0.75, 0.25) and len(data) == 3

    # a selection into another output from these signals (signals.from) finds the set in its source
    logs.clear()
    raw = _config(tmp_path, weights, 0.25, images=str(tmp_path / "ref"))
    raw.update(output={"path": str(tmp_path / "out2")}, signals={"from": str(tmp_path / "out")})
    manifest = pipeline.run(parse_config(raw), progress=False, log=logs.append)
    assert not any(": embedding " in m for m in logs) and sum("cached" in m for m in logs) == 1
    step = [s for s in manifest["selection"] if s["op"] == "vas"][0]["describe"]
    assert step["reference"] == ref_file and not (tmp_path / "out2" / "_djray" / "reference").exists()
    assert {r[S.KEY] for r in _rows(tmp_path / "out2", "data")} == {r[S.KEY] for r in data}


def test_reference_target_config_errors(tmp_path):
    base = _config(tmp_path, tmp_path / "w.pt", 0.2)
    for target in ({}, {"path": "/r.parquet", "model": MODEL, "images": "/imgs"}):
        raw = {**base, "sieve": [{"op": "vas", "target": {"kind": "reference", **target}}]}
        with pytest.raises(ConfigError, match=r"sieve\.0\.vas\.target\.reference: Value error, give exactly one of "
                                              r"target\.path .* and target\.images"):
            parse_config(raw)
    with pytest.raises(ConfigError, match=r"sieve\.0\.vas\.target\.reference: .*target\.path needs target\.model"):
        parse_config({**base, "sieve": [{"op": "vas", "target": {"kind": "reference", "path": "/r.parquet"}}]})
    with pytest.raises(ConfigError, match=r"sieve\.0\.vas: reads clip_score, which needs a `clip:` section"):
        parse_config({**_config(tmp_path, tmp_path / "w.pt", 0.2, images="/imgs"), "clip": None})
    (tmp_path / "pool").mkdir()
    corpus.write_tar(tmp_path / "pool" / "a.tar", corpus.sample_members("k"))
    cfg = parse_config(_config(tmp_path, tmp_path / "w.pt", 0.2, images=str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match=r"sieve\.0\.vas\.target\.images: input path not found"):
        prepare(cfg)
    (tmp_path / "empty").mkdir()
    cfg = parse_config(_config(tmp_path, tmp_path / "w.pt", 0.2, images=str(tmp_path / "empty"), format="parquet"))
    with pytest.raises(ConfigError, match=r"sieve\.0\.vas\.target\.images: no \.parquet shards found"):
        prepare(cfg)
    from djray.ops.sieve.vas import write_reference

    other = tmp_path / "other.parquet"
    write_reference(str(other), np.ones((2, 8)), "RN50")
    cfg = parse_config(_config(tmp_path, tmp_path / "w.pt", 0.2, path=str(other), model=MODEL))
    with pytest.raises(ConfigError, match=r"sieve\.0\.vas\.target\.path: vas target .*: embedded by CLIP model "
                                          r"'RN50', the job's is 'ViT-S-32'"):
        prepare(cfg)
    cfg = parse_config(_config(tmp_path, tmp_path / "w.pt", 0.2, path=str(tmp_path / "none.parquet"), model=MODEL))
    with pytest.raises(ConfigError, match=r"sieve\.0\.vas\.target\.path: cannot read .*none\.parquet"):
        prepare(cfg)
