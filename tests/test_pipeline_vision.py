"""The vision branch end to end through `pipeline.run` on the shared Ray instance.

read → decode (+ canonical crop) → DinoPatchScorer actor pool → write, checked against the data contract
(ARCHITECTURE §2) and against the same op run in-process on the same canonical crops. Small timm models with
`weights: random` where the architecture does not matter; the real `vit_small_patch16_224.dino` architecture with a
`file:` state dict (and a DINO-layout linear head) saved by the test itself.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corpus import write_bad_rows_shard
from djray import pipeline
from djray import schema as S
from djray._compat import patch_torchvision
from djray.config import ConfigError, load_config, parse_config
from djray.geometry import canonical_crop, open_image
from djray.patches import num_keep, select_patches
from djray.runtime.manifest import format_summary
from djray.sample_data import write_sample_corpus

patch_torchvision()
torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

REPO = Path(__file__).resolve().parents[1]
LABELS = (REPO / "djray" / "data" / "imagenet1k_labels.txt").read_text(encoding="utf-8").split("\n")
LABELS = [line.strip() for line in LABELS if line.strip()]
MAX_PIXELS = 89_478_485
VISION_COLS = [f.name for f in S.VISION_FIELDS]


# ---- helpers -----------------------------------------------------------------------------------------------------
def _run(raw: dict) -> dict:
    return pipeline.run(parse_config(raw), progress=False, log=lambda m: None)


def _read(out: Path, kind: str) -> pa.Table:
    files = sorted((out / kind).glob("*.parquet"))
    assert files, f"no {kind} files under {out}"
    return pa.concat_tables([pq.read_table(f) for f in files])


def _tar_images(corpus: Path) -> dict[str, bytes]:
    """key → image bytes of every sample in the corpus tars (webdataset layout: key = name before the first dot)."""
    out = {}
    for shard in sorted(corpus.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar:
                key, _, ext = m.name.partition(".")
                if ext in ("jpg", "png", "webp"):
                    out[key] = tar.extractfile(m).read()
    return out


def _topk(scores: list[float], ratio: float) -> list[int]:
    """Independent top-k: k = max(1, floor(r·m + 0.5)), highest scores, ties by lower index, ascending output."""
    m = len(scores)
    k = max(1, math.floor(ratio * m + 0.5))
    return sorted(sorted(range(m), key=lambda i: (-scores[i], i))[:k])


def _crops(images: dict[str, bytes], keys: list[str], size: int) -> np.ndarray:
    return np.stack([canonical_crop(open_image(images[k], MAX_PIXELS), size) for k in keys])


def _op_batch(keys: list[str], crops: np.ndarray) -> pa.Table:
    """A batch in the shape the vision op receives inside the pipeline (source columns + `_pixels`)."""
    rows = [dict(key=k, src_shard="inproc.tar", src_index=i, _shard_order=0, caption_raw="c")
            for i, k in enumerate(keys)]
    t = pa.Table.from_pylist(rows, schema=S.SOURCE_SCHEMA)
    size = crops.shape[1]
    return t.append_column(S.PIXELS, pa.array([c.tobytes() for c in crops], type=pa.binary(size * size * 3)))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _corpus_with_rejects(root: Path) -> Path:
    """24 synthetic samples in 3 shards plus one shard with a good row and three rows every stage must reject."""
    corpus = root / "corpus"
    write_sample_corpus(str(corpus), 24, 3, "webdataset", seed=7)
    write_bad_rows_shard(corpus / "00003.tar")
    return corpus


# ---- one shared run: test_vit, random weights, small blocks and batches ------------------------------------------
TINY = {"model": "test_vit", "weights": "random", "image_size": 160, "ratio": 0.3, "strategy": "topk",
        "batch_size": 3, "precision": "fp32"}


@pytest.fixture(scope="module")
def vision_job(ray_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("vision_job")
    corpus = _corpus_with_rejects(root)
    raw = {"input": {"path": str(corpus), "format": "webdataset", "rows_per_block": 4},
           "output": {"path": str(root / "out")}, "decode": {"max_pixels": 50_000_000}, "vision": dict(TINY)}
    t0 = time.monotonic()
    manifest = _run(raw)
    return {"corpus": corpus, "out": root / "out", "raw": raw, "manifest": manifest,
            "elapsed_s": time.monotonic() - t0}


def test_vision_run_writes_the_contract(vision_job):
    out, manifest = vision_job["out"], vision_job["manifest"]
    assert manifest["status"] == "complete" and manifest["accounting_ok"]
    assert manifest["rows_in"] == 28 and manifest["shards_done"] == 4
    assert {"corrupt_image", "empty_caption", "image_too_small"} <= set(manifest["rejected_by_reason"])

    for f in sorted((out / "data").glob("*.parquet")):  # exact column names and types, in every file
        assert pq.read_schema(f).remove_metadata().equals(S.data_schema(vision=True)), f
    for f in sorted((out / "rejects").glob("*.parquet")):
        assert pq.read_schema(f).remove_metadata().equals(S.rejects_schema(vision=True)), f
        geometry = json.loads(pq.read_metadata(f).metadata[S.META_GEOMETRY])
        assert geometry["image_size"] == 160

    data = _read(out, "data")
    assert data.num_rows == manifest["rows_kept"] > 0
    embed_dim = timm.create_model("test_vit", pretrained=False, num_classes=0).embed_dim
    for f in sorted((out / "data").glob("*.parquet")):
        geometry = json.loads(pq.read_metadata(f).metadata[S.META_GEOMETRY])
        assert geometry["image_size"] == 160 and geometry["crop"] == "center"
        assert geometry["max_pixels"] == 50_000_000  # decode.max_pixels, recorded for the trainer
    ratio = TINY["ratio"]
    for row in data.to_pylist():
        p, gh, gw = row["patch_size"], row["grid_h"], row["grid_w"]
        assert (p, gh, gw) == (16, 10, 10) and gh * p == gw * p == geometry["image_size"]
        scores = row["patch_scores"]
        assert len(scores) == gh * gw and all(math.isfinite(s) and s >= 0 for s in scores)
        assert 0 < sum(scores) <= 1 + 1e-5  # mean over heads of a softmax over CLS + patches, CLS dropped
        idx = row["patch_idx"]
        assert len(idx) == max(1, math.floor(ratio * gh * gw + 0.5)) == 30
        assert idx == sorted(set(idx)) and 0 <= idx[0] and idx[-1] < gh * gw
        assert idx == _topk(scores, ratio), row["key"]
        assert len(row["vis_embedding"]) == embed_dim and all(math.isfinite(v) for v in row["vis_embedding"])
        assert row["vis_classes"] == [] and row["vis_evidence"] == []  # head: none
    assert len({tuple(r) for r in data.column("patch_scores").to_pylist()}) > 1  # rows are not all alike

    rejects = _read(out, "rejects")
    assert rejects.num_rows == manifest["rows_rejected"] >= 3
    for name in VISION_COLS:
        assert rejects.column(name).null_count == rejects.num_rows, name
    by_key = {r["key"]: r for r in rejects.to_pylist()}
    assert (by_key["x1corrupt"]["stage"], by_key["x1corrupt"]["reason"]) == ("decode", "corrupt_image")
    assert by_key["x2nocap"]["reason"] == "empty_caption" and by_key["x3tiny"]["reason"] == "image_too_small"

    model = manifest["models"]["vision"]
    assert model["op"] == "dino_patch" and model["params"]["weights"] == "random"
    backbone = model["backbone"]
    assert backbone["weights"] == "random" and backbone["model"] == "test_vit"
    assert len(backbone["state_sha256"]) == 64 and int(backbone["state_sha256"], 16) >= 0
    assert (backbone["patch_size"], backbone["grid_h"], backbone["image_size"]) == (16, 10, 160)
    assert "RANDOM weights" in format_summary(manifest)
    # resources left out are resolved against the session's instance (4 CPU tokens on this machine's cores): one
    # actor running one single-thread batch per core, one CPU token kept for the read tasks; precision as set,
    # recorded with its reason
    import os

    cores = min(4, os.cpu_count())
    r = model["resources"]
    assert (r["pool_size"], r["calls"]) == (1, cores) and model["threads"] == r["threads"] == 1
    # the CPU actor's process started with the allocator tunables (read inside it: runtime/malloc.py)
    from djray.runtime.malloc import CPU_ACTOR_TUNABLES

    assert model["malloc"] == os.environ.get("GLIBC_TUNABLES", CPU_ACTOR_TUNABLES)
    assert r["pool_size"] * r["num_cpus"] <= 4 - 1
    assert model["precision"] == {"requested": "fp32", "chosen": "fp32", "why": "set in the config"}


def test_pipeline_scores_equal_in_process_op_by_key(vision_job):
    """No row reordering or misalignment across blocks (rows_per_block 4), batches (3) and shards: every output row
    carries exactly what the op computes in-process for that key's canonical crop."""
    from djray.ops.vision.dino_patch import DinoPatchScorer

    data = _read(vision_job["out"], "data").to_pylist()
    images = _tar_images(vision_job["corpus"])
    for row in data:
        assert row["image"] == images[row["key"]]  # original bytes, unchanged
    keys = sorted((r["key"] for r in data), reverse=True)  # another order and batch composition than the pipeline's
    params = parse_config(vision_job["raw"]).vision
    op = DinoPatchScorer(params)
    op.setup()
    out = op(_op_batch(keys, _crops(images, keys, params.image_size)))
    want = {k: (s, i, e) for k, s, i, e in zip(keys, out[S.PATCH_SCORES].to_pylist(), out[S.PATCH_IDX].to_pylist(),
                                                 out[S.VIS_EMBEDDING].to_pylist())}
    for row in data:
        scores, idx, emb = want[row["key"]]
        np.testing.assert_allclose(row["patch_scores"], scores, rtol=1e-4, atol=1e-7, err_msg=row["key"])
        np.testing.assert_allclose(row["vis_embedding"], emb, rtol=1e-4, atol=1e-5, err_msg=row["key"])
        assert row["patch_idx"] == idx, row["key"]


def test_model_change_is_refused_runtime_keys_resume_and_a_new_ratio_reselects_without_the_model(vision_job,
                                                                                                   tmp_path):
    out = tmp_path / "out"
    shutil.copytree(vision_job["out"], out)
    raw = {**vision_job["raw"], "output": {"path": str(out)}}  # output.path is not part of any fingerprint
    for signals_change in ({"aggregation": "max_prob"}, {"image_size": 64}):
        with pytest.raises(ConfigError, match="other signals parameters"):
            pipeline.prepare(parse_config({**raw, "vision": {**raw["vision"], **signals_change}}))
    before = _read(out, "data")
    runtime_only = {**raw["vision"], "batch_size": 7, "resources": {"pool_size": 1, "num_cpus": 0.5}}
    manifest = _run({**raw, "vision": runtime_only})
    assert manifest["status"] == "complete" and manifest["run"]["rows_processed"] == 0  # a resume with nothing to do
    assert manifest["config_sha256"] == vision_job["manifest"]["config_sha256"]
    assert _read(out, "data").equals(before)

    # another ratio and strategy: phase A is skipped (no actor starts: none rewrites its model record), patch_idx is
    # re-chosen from the stored scores
    record = out / "_djray" / "models" / "dino_patch.json"
    stamp = record.stat().st_mtime_ns
    reselect = {**raw["vision"], "ratio": 0.25, "strategy": "mix", "mix_alpha": 0.5}
    manifest = _run({**raw, "vision": reselect})
    assert manifest["status"] == "complete" and manifest["run"]["rows_processed"] == 0
    assert record.stat().st_mtime_ns == stamp
    assert manifest["signals_sha256"] == vision_job["manifest"]["signals_sha256"]
    assert manifest["selection_sha256"] != vision_job["manifest"]["selection_sha256"]
    after = _read(out, "data")
    assert after.column(S.KEY).to_pylist() == before.column(S.KEY).to_pylist()
    assert after.column(S.PATCH_SCORES).equals(before.column(S.PATCH_SCORES))
    for row in after.to_pylist():
        expect = select_patches(np.asarray(row[S.PATCH_SCORES], np.float32), 0.25, "mix", raw["vision"].get("seed", 0),
                                row[S.KEY], mix_alpha=0.5)
        assert row[S.PATCH_IDX] == expect.tolist()
        assert len(row[S.PATCH_IDX]) == num_keep(0.25, row[S.GRID_H] * row[S.GRID_W])


# ---- the real DINO ViT-S/16 architecture, `file:` weights and a DINO linear head -----------------------------------
def test_file_weights_and_dino_linear_head(ray_cluster, tmp_path):
    from safetensors.torch import load_file, save_file

    arch = "vit_small_patch16_224.dino"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)  # not the op's seed-0 random init: the file must really be loaded
        sd = timm.create_model(arch, pretrained=False, num_classes=0).state_dict()
        weight = torch.randn(len(LABELS), 4 * 384) * 0.01
    backbone_file = tmp_path / "dino_vits16.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(backbone_file))
    bias = torch.zeros(len(LABELS))
    bias[[3, 7]] = 8.0  # two classes carry ~0.4 probability each: evidence for every image at ε = 0.3
    head_file = tmp_path / "dino_deitsmall16_linearweights.pth"
    torch.save({"state_dict": {"module.linear.weight": weight, "module.linear.bias": bias}}, head_file)

    corpus = tmp_path / "corpus"
    write_sample_corpus(str(corpus), 8, 2, "webdataset", seed=3)
    threshold, top_k = 0.3, 5
    manifest = _run({
        "input": {"path": str(corpus), "format": "webdataset"}, "output": {"path": str(tmp_path / "out")},
        "vision": {"model": arch, "weights": f"file:{backbone_file}", "image_size": 224, "ratio": 0.5,
                   "batch_size": 4, "precision": "fp32",
                   "head": {"kind": "dino_linear", "weights": f"file:{head_file}", "threshold": threshold,
                            "top_k": top_k}}})
    assert manifest["status"] == "complete"
    data = _read(tmp_path / "out", "data").to_pylist()
    assert data

    # the same model built here from the same state dict (no djray loader involved)
    model = timm.create_model(arch, pretrained=False, num_classes=0, img_size=224).eval()
    model.load_state_dict(load_file(str(backbone_file)), strict=True)
    keys = [r["key"] for r in data]
    crops = torch.from_numpy(_crops(_tar_images(corpus), keys, 224)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(1, 3, 1, 1)
    # timm's own unfused path: the last block's attention matrix (row 0 = CLS → tokens) and the last-4 [CLS] features
    x = (crops - mean) / std
    last = model.blocks[-1].attn
    last.fused_attn = False
    captured = {}
    hook = last.attn_drop.register_forward_hook(lambda m, i, o: captured.setdefault("attn", o))
    with torch.no_grad():
        model.forward_features(x)
        inter = model.forward_intermediates(x, indices=4, norm=True, return_prefix_tokens=True,
                                            intermediates_only=True)
    hook.remove()
    npt = model.num_prefix_tokens
    scores = captured["attn"][:, :, 0, npt:].mean(1).double().numpy()  # mean over heads, prefix dropped
    feats = torch.cat([prefix[:, 0] for _, prefix in inter], dim=-1)  # DINO ViT-S protocol: last-4 [CLS]
    probs = torch.softmax(feats.double() @ weight.double().T + bias.double(), dim=-1).numpy()

    for row, s, p in zip(data, scores, probs):
        assert (row["patch_size"], row["grid_h"], row["grid_w"]) == (16, 14, 14)
        np.testing.assert_allclose(row["patch_scores"], s, rtol=1e-4, atol=1e-7, err_msg=row["key"])
        assert len(row["patch_idx"]) == 98 and row["patch_idx"] == _topk(row["patch_scores"], 0.5)
        assert len(row["vis_embedding"]) == 384
        classes = row["vis_classes"]
        assert len(classes) == top_k and all(c["label"] in LABELS for c in classes)
        assert [c["prob"] for c in classes] == sorted((c["prob"] for c in classes), reverse=True)
        order = np.argsort(-p, kind="stable")[:top_k]
        assert [c["label"] for c in classes] == [LABELS[i] for i in order]
        np.testing.assert_allclose([c["prob"] for c in classes], p[order], rtol=1e-4, atol=1e-6)
        assert row["vis_evidence"], row["key"]
        assert row["vis_evidence"] == [c["label"] for c in classes if c["prob"] > threshold]
        assert set(row["vis_evidence"]) <= {LABELS[3], LABELS[7]}
        assert set(row["vis_evidence"]) == {LABELS[i] for i in np.flatnonzero(p > threshold)}

    record = manifest["models"]["vision"]
    assert record["backbone"]["weights"] == f"file:{backbone_file}"
    assert record["backbone"]["file_sha256"] == _sha256(backbone_file)
    assert len(record["backbone"]["state_sha256"]) == 64
    assert record["head"]["kind"] == "dino_linear" and record["head"]["features"] == "cls4"
    assert record["head"]["file_sha256"] == _sha256(head_file)
    assert "RANDOM" not in format_summary(manifest)
    # the histogram of evidence classes per kept image, and the summary line that shows it
    lengths = [len(r["vis_evidence"]) for r in data]
    assert manifest["evidence_per_image"] == {str(n): lengths.count(n) for n in sorted(set(lengths))}
    assert set(manifest["evidence_per_image"]) <= {"1", "2"}  # two classes near 0.4 each, ε = 0.3
    shown = ", ".join(f"{k}: {v}" for k, v in manifest["evidence_per_image"].items())
    assert f"evidence classes per image (ε 0.3, softmax)  {shown}" in format_summary(manifest)


# ---- bad weights and geometry: fail before work, or fail cleanly -------------------------------------------------
def test_missing_weight_files_fail_before_work(tmp_path, capsys):
    from djray import cli

    corpus = tmp_path / "corpus"
    write_sample_corpus(str(corpus), 2, 1, "webdataset", seed=1)
    out = tmp_path / "out"
    base = {"input": {"path": str(corpus), "format": "webdataset"}, "output": {"path": str(out)}}
    missing = tmp_path / "absent.safetensors"
    with pytest.raises(ConfigError, match=r"vision\.weights: file not found: .*absent\.safetensors"):
        pipeline.prepare(parse_config({**base, "vision": {**TINY, "weights": f"file:{missing}"}}))
    with pytest.raises(ConfigError, match=r"vision\.head\.weights: file not found"):
        pipeline.prepare(parse_config({**base, "vision": {**TINY, "head": {"kind": "dino_linear",
                                                                           "weights": f"file:{missing}"}}}))
    wrong_type = tmp_path / "weights.txt"
    wrong_type.write_text("not weights")
    with pytest.raises(ConfigError, match=r"vision\.weights: .*unsupported weights file type"):
        pipeline.prepare(parse_config({**base, "vision": {**TINY, "weights": f"file:{wrong_type}"}}))
    config = tmp_path / "job.yaml"
    config.write_text(f"input: {{path: {corpus}, format: webdataset}}\noutput: {{path: {out}}}\n"
                      f"vision: {{model: test_vit, image_size: 160, weights: 'file:{missing}'}}\n")
    assert cli.main(["validate", str(config)]) != 0
    assert "vision.weights: file not found" in capsys.readouterr().err
    assert not out.exists()  # nothing was written: the job never started


def test_image_size_not_a_multiple_of_the_patch_size_is_a_config_error():
    raw = {"input": {"path": "x", "format": "webdataset"}, "output": {"path": "y"},
           "vision": {"model": "vit_tiny_patch16_224", "weights": "random", "image_size": 100}}
    with pytest.raises(ConfigError, match=r"image_size 100 is not a multiple of the patch size 16"):
        parse_config(raw)


def test_image_size_error_names_the_key():
    raw = {"input": {"path": "x", "format": "webdataset"}, "output": {"path": "y"},
           "vision": {"model": "vit_tiny_patch16_224", "weights": "random", "image_size": 100}}
    with pytest.raises(ConfigError, match=r"vision\.image_size"):
        parse_config(raw)


@pytest.fixture(scope="module")
def wrong_shape_run(ray_cluster, tmp_path_factory):
    """A `file:` checkpoint of the right format and keys but another width (D=96 vs test_vit's 64): only loading the
    model can tell. Run it once; the tests below look at how it failed."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("wrong_shape")
    corpus = root / "corpus"
    write_sample_corpus(str(corpus), 6, 2, "webdataset", seed=2)
    wide = timm.create_model("test_vit", pretrained=False, num_classes=0, embed_dim=96)
    save_file(wide.state_dict(), str(root / "wide.safetensors"))
    cfg = parse_config({"input": {"path": str(corpus), "format": "webdataset"}, "output": {"path": str(root / "out")},
                        "vision": {**TINY, "weights": f"file:{root / 'wide.safetensors'}"}})
    pipeline.prepare(cfg)  # the file exists and is readable: preflight cannot see the shapes
    t0 = time.monotonic()
    try:
        pipeline.run(cfg, progress=False, log=lambda m: None)
        error = None
    except Exception as e:  # noqa: BLE001 - inspected by the tests
        error = e
    return {"error": error, "elapsed_s": time.monotonic() - t0, "out": root / "out"}


def test_wrong_weight_shapes_fail_the_job_cleanly(wrong_shape_run):
    e, out = wrong_shape_run["error"], wrong_shape_run["out"]
    assert isinstance(e, pipeline.JobError), repr(e)
    assert wrong_shape_run["elapsed_s"] < 90  # fails, does not hang waiting for actors that never start
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "incomplete" and manifest["rows_kept"] == 0 and "error" in manifest
    assert not list(out.glob("data/*.parquet"))


def test_wrong_weight_shapes_error_names_the_key(wrong_shape_run):
    e, out = wrong_shape_run["error"], wrong_shape_run["out"]
    assert "vision.weights" in str(e) and "shape mismatch" in str(e)
    assert "vision.weights" in json.loads((out / "manifest.json").read_text())["error"]


# ---- the production config ---------------------------------------------------------------------------------------
def test_cc3m_juicer_config_parses(tmp_path):
    cfg = load_config(REPO / "configs" / "cc3m_juicer.yaml")
    assert cfg.input.format == "webdataset" and cfg.input.path.startswith("s3://")
    assert cfg.output.path.startswith("s3://") and cfg.output.mode == "resume"
    v = cfg.vision
    assert v is not None and v.model == "vit_small_patch16_224.dino" and v.weights == "hub"
    assert (v.precision, v.batch_size, v.ratio, v.strategy) == ("bf16", 256, 0.5, "topk")
    assert v.resources.num_gpus == 1 and v.resources.pool_size >= 1
    assert (v.head.kind, v.head.weights, v.head.threshold) == ("dino_linear", "hub", 0.7)
    assert v.image_size % 16 == 0
    assert "vision" in cfg.stages()

    # its input pattern selects exactly the shards on a local mirror of the bucket layout
    from djray.io.fs import Storage, list_shards

    bucket_path = cfg.input.path[len("s3://"):]
    bucket, _, pattern = bucket_path.partition("/")
    mirror = tmp_path / bucket
    (mirror / "cc3m").mkdir(parents=True)
    for name in ("00000.tar", "00001.tar", "00331.tar", "00000_stats.json", "00000.parquet"):
        (mirror / "cc3m" / name).write_bytes(b"")
    root, shards = list_shards(str(tmp_path / bucket_path), "webdataset", Storage())
    assert shards == ["00000.tar", "00001.tar", "00331.tar"]



def test_actor_pools_that_hold_every_cpu_token_still_run(ray_cluster, tmp_path):
    """pool_size x num_cpus = the local instance's CPUs used to be refused (read tasks would wait forever); the
    runtime now reserves fewer CPU tokens for the pool and keeps the threads asked for."""
    write_sample_corpus(str(tmp_path / "in"), 4, 1, "webdataset", seed=0)
    cfg = parse_config({"input": {"path": str(tmp_path / "in"), "format": "webdataset"},
                        "output": {"path": str(tmp_path / "out")},
                        "vision": {"model": "test_vit", "weights": "random", "image_size": 160, "precision": "fp32",
                                   "resources": {"pool_size": 1, "num_cpus": 4}}})
    notes: list[str] = []
    manifest = pipeline.run(cfg, progress=False, log=notes.append)
    assert manifest["status"] == "complete" and manifest["rows_in"] == 4
    r = manifest["models"]["vision"]["resources"]
    assert r["pool_size"] == 1 and r["num_cpus"] <= 3 and r["threads"] == 4
    assert any(n.startswith("[resources] vision: 1 actor(s)") for n in notes), notes
