"""Reading governed output for training: preflight errors before any training, canonical crops, flips mirror the
indices, k fixed per batch, deterministic per-worker streams."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from djray import schema as S
from djray.config import ConfigError
from djray.geometry import canonical_crop, flip_patch_index, open_image
from djray.patches import select_patches
from djray.train.config import parse_train_config
from djray.train.batches import BatchBuilder, kept_indices
from djray.train.data import TrainDataError, inspect_data, open_stream
from djray.train.run import run_train

MAX_PIXELS = 89_478_485


def _plan(raw):
    cfg = parse_train_config(raw)
    return cfg, inspect_data(cfg, cfg.model.resolved())


def _all_rows(governed):
    return pa.concat_tables([pq.read_table(f) for f in sorted((governed / "data").glob("*.parquet"))])


def _no_training_happened(out):
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()


def test_preflight_reads_the_contract(governed, governed_rows, train_config, tmp_path):
    cfg, plan = _plan(train_config(tmp_path / "o"))
    assert plan.num_rows == governed_rows and len(plan.shards) == 4
    assert plan.image_size == 64 and plan.grid == 4 and plan.has_scores
    assert plan.footer_geometry["crop"] == "center"
    assert plan.check_workers(2, 4) == min(sum(s.num_rows for s in plan.share(r, 2)) for r in range(2)) // 4


def test_missing_columns_are_named_before_training(governed, train_config, tmp_path):
    data = tmp_path / "novision" / "data"
    data.mkdir(parents=True)
    t = _all_rows(governed).select([S.KEY, S.IMAGE, S.CAPTION])  # governance without a vision section
    pq.write_table(t, data / "00000.parquet")
    out = tmp_path / "o"
    raw = train_config(out, data={"path": str(tmp_path / "novision")})
    with pytest.raises(TrainDataError, match=r"00000.parquet lacks column\(s\) \['patch_idx', 'grid_h', 'grid_w', "
                                             r"'patch_size'\] needed by patches.mode=kept"):
        run_train(parse_train_config(raw))
    with pytest.raises(TrainDataError, match=r"lacks column\(s\) \['patch_scores'"):
        run_train(parse_train_config({**raw, "patches": {"mode": "rescore"}}))
    pq.write_table(t.drop([S.CAPTION]), data / "00000.parquet")
    with pytest.raises(TrainDataError, match=r"lacks column\(s\) \['caption'\]"):
        run_train(parse_train_config({**raw, "patches": {"mode": "full"}}))
    _no_training_happened(out)


def test_grid_mismatch_is_an_error_before_training(train_config, tmp_path):
    out = tmp_path / "o"
    with pytest.raises(TrainDataError, match=r"grid mismatch: .* 4×4 grid of 16 px patches at image_size 64, the model "
                                             r"needs 6×6 patches .*set model.image_size: 64"):
        run_train(parse_train_config(train_config(out, model={"image_size": 96})))
    # full images need no stored grid: the same data trains at another size
    cfg, plan = _plan(train_config(out, model={"image_size": 96}, patches={"mode": "full"}))
    assert plan.image_size == 96 and plan.grid is None
    _no_training_happened(out)


def test_empty_and_missing_data_are_errors(governed, train_config, tmp_path):
    empty = tmp_path / "empty" / "data"
    empty.mkdir(parents=True)
    out = tmp_path / "o"
    with pytest.raises(TrainDataError, match="no Parquet files"):
        run_train(parse_train_config(train_config(out, data={"path": str(tmp_path / "empty")})))
    src = sorted((governed / "data").glob("*.parquet"))[0]
    t = pq.read_table(src)
    pq.write_table(t.slice(0, 0).replace_schema_metadata(t.schema.metadata), empty / "00000.parquet")
    with pytest.raises(TrainDataError, match=r"the dataset is empty \(1 Parquet file\(s\), 0 rows\)"):
        run_train(parse_train_config(train_config(out, data={"path": str(tmp_path / "empty")})))
    with pytest.raises(TrainDataError, match="data.path: not found"):
        run_train(parse_train_config(train_config(out, data={"path": str(tmp_path / "nope")})))
    with pytest.raises(TrainDataError, match="fewer than one micro batch"):
        run_train(parse_train_config(train_config(out, train={"batch_size": 512})))
    with pytest.raises(TrainDataError, match=r"2 non-empty shard\(s\) for 3 workers"):
        shutil.copytree(governed / "data", tmp_path / "two" / "data")
        for f in sorted((tmp_path / "two" / "data").glob("*.parquet"))[2:]:
            f.unlink()
        cfg, plan = _plan(train_config(out, data={"path": str(tmp_path / "two")}))
        plan.check_workers(3, 1)
    _no_training_happened(out)


def test_config_errors_name_the_key(train_config, tmp_path):
    raw = train_config(tmp_path / "o")
    with pytest.raises(ConfigError, match=r"train.stpes: unknown key"):
        parse_train_config({**raw, "train": {**raw["train"], "stpes": 3}})
    with pytest.raises(ConfigError, match="exactly one of train.steps and train.epochs"):
        parse_train_config({**raw, "train": {**raw["train"], "epochs": 1}})
    with pytest.raises(ConfigError, match="'train_batch_size' is derived by djray: set train.batch_size"):
        parse_train_config({**raw, "deepspeed": {"config": {"train_batch_size": 4}}})
    with pytest.raises(ConfigError, match=r"model.arch: Input should be 'clip_tiny'"):
        parse_train_config({**raw, "model": {"arch": "clip_xl"}})
    with pytest.raises(ConfigError, match="not divisible by workers"):
        parse_train_config({**raw, "train": {**raw["train"], "batch_size": 7}}).micro_batch(2)
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="train.precision: bf16 needs a GPU"):
            run_train(parse_train_config({**raw, "train": {**raw["train"], "precision": "bf16"}}))
        with pytest.raises(ConfigError, match=r"needs GPU workers \(ray.use_gpu: true\)"):
            run_train(parse_train_config({**raw, "train": {**raw["train"], "precision": "fp16"},
                                          "ray": {"num_workers": 2}}))


def _builder(cfg, plan):
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer(context_length=77)
    return BatchBuilder(cfg, plan, lambda texts: tok(texts).numpy())


def test_batches_use_the_canonical_crop_and_flips_mirror_indices(governed, train_config, tmp_path):
    cfg, plan = _plan(train_config(tmp_path / "o", data={"hflip": 1.0, "shuffle": False}))
    rows, _ = open_stream(cfg, plan, 0, 1).take(4)
    batch = _builder(cfg, plan)(rows)
    for i, row in enumerate(rows):
        crop = canonical_crop(open_image(row[S.IMAGE], MAX_PIXELS), 64)
        assert np.array_equal(batch.pixels[i], crop[:, ::-1])
        want = np.sort(flip_patch_index(np.asarray(row[S.PATCH_IDX], dtype=np.int64), 4))
        assert batch.keep_idx[i].tolist() == want.tolist()
    assert batch.keep_idx.shape == (4, 8)

    cfg, plan = _plan(train_config(tmp_path / "o", patches={"mode": "rescore", "ratio": 0.25, "strategy": "topk"}))
    rows, _ = open_stream(cfg, plan, 0, 1).take(3)
    batch = _builder(cfg, plan)(rows)
    for i, row in enumerate(rows):
        crop = canonical_crop(open_image(row[S.IMAGE], MAX_PIXELS), 64)
        assert np.array_equal(batch.pixels[i], crop)  # no flip configured
        assert batch.keep_idx[i].tolist() == select_patches(row[S.PATCH_SCORES], 0.25, "topk").tolist()
    assert batch.keep_idx.shape == (3, 4)


def test_kept_mode_takes_the_batch_minimum_k_by_score():
    scores = np.linspace(0, 1, 16).astype(np.float32)  # patch 15 scores highest
    rows = [{S.KEY: "a", S.PATCH_IDX: [0, 3, 9, 14, 15], S.PATCH_SCORES: scores},
            {S.KEY: "b", S.PATCH_IDX: [1, 2, 4], S.PATCH_SCORES: scores}]
    out = kept_indices(rows, 4, True, 0)
    assert [o.tolist() for o in out] == [[9, 14, 15], [1, 2, 4]]
    with pytest.raises(TrainDataError, match="outside the 4×4 grid"):
        kept_indices([{S.KEY: "c", S.PATCH_IDX: [16], S.PATCH_SCORES: scores}], 4, True, 0)


def test_streams_are_deterministic_resumable_and_split_by_rank(governed, train_config, tmp_path):
    cfg, plan = _plan(train_config(tmp_path / "o"))
    s0 = open_stream(cfg, plan, 0, 2)
    first, state = s0.take(5)
    rest, _ = s0.take(7)
    resumed, _ = open_stream(cfg, plan, 0, 2, state).take(7)
    assert [r[S.KEY] for r in resumed] == [r[S.KEY] for r in rest]
    # rank 1 reads the other shards; one epoch of rank 0 covers its share exactly once
    share0 = sum(s.num_rows for s in plan.share(0, 2))
    keys0 = [r[S.KEY] for r in open_stream(cfg, plan, 0, 2).take(share0)[0]]
    keys1 = [r[S.KEY] for r in open_stream(cfg, plan, 1, 2).take(5)[0]]
    assert len(set(keys0)) == share0 and not set(keys0) & set(keys1)


def test_reads_governed_output_from_s3(governed, train_config, tmp_path, s3_bucket):
    """The same preflight and rows from an s3:// copy of the governed output (loopback S3 server)."""
    import boto3

    endpoint, bucket = s3_bucket
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    for f in sorted((governed / "data").glob("*.parquet")):
        s3.upload_file(str(f), bucket, f"governed/data/{f.name}")
    s3.put_object(Bucket=bucket, Key="governed/manifest.json", Body=b"{}")
    local_cfg, local_plan = _plan(train_config(tmp_path / "o"))
    cfg, plan = _plan(train_config(tmp_path / "o", data={"path": f"s3://{bucket}/governed/"},
                                   storage={"endpoint_url": endpoint, "region": "us-east-1"}))
    assert plan.num_rows == local_plan.num_rows and [s.rel for s in plan.shards] == [s.rel for s in local_plan.shards]
    rows, _ = open_stream(cfg, plan, 0, 1).take(6)
    local_rows, _ = open_stream(local_cfg, local_plan, 0, 1).take(6)
    assert [r[S.KEY] for r in rows] == [r[S.KEY] for r in local_rows]
    assert [r[S.IMAGE] for r in rows] == [r[S.IMAGE] for r in local_rows]


def test_shipped_training_configs_parse():
    from pathlib import Path

    from djray.train.config import load_train_config

    configs = sorted((Path(__file__).resolve().parents[2] / "configs" / "train").glob("*.yaml"))
    assert configs
    for path in configs:
        cfg = load_train_config(path)
        assert cfg.model.resolved().grid == 14, path


def test_patch_selection_keys_only_with_rescore(train_config, tmp_path):
    raw = train_config(tmp_path / "o")
    for mode in ("kept", "full"):
        for key, value in (("ratio", 0.5), ("strategy", "topk"), ("strata", 2), ("mix_alpha", 0.3)):
            with pytest.raises(ConfigError, match=rf"patches.{key} only apply to patches.mode: rescore"):
                parse_train_config({**raw, "patches": {"mode": mode, key: value}})
    cfg = parse_train_config({**raw, "patches": {"mode": "rescore", "ratio": 0.25, "strategy": "mix", "strata": 2,
                                                 "mix_alpha": 0.3}})
    assert (cfg.patches.ratio, cfg.patches.strategy) == (0.25, "mix")
    assert parse_train_config({**raw, "patches": {"mode": "kept", "seed": 3}}).patches.seed == 3  # kept reads seed
    # what Ray Train workers receive (the keys as set) validates again to the same config
    cfg = parse_train_config(raw)
    assert parse_train_config(cfg.model_dump(mode="json", exclude_unset=True)) == cfg


def test_gradient_accumulation_shrinking_the_contrastive_batch_needs_consent(train_config, tmp_path):
    from djray.train.run import contrastive_batch_warning

    raw = train_config(tmp_path / "o", deepspeed={"config": {"gradient_accumulation_steps": 2}})
    for loss in ("itc", "siglip"):
        with pytest.raises(ConfigError, match=r"gradient_accumulation_steps: 2 .* "
                                              r"train.allow_small_contrastive_batch: true"):
            parse_train_config({**raw, "loss": loss})
    cfg = parse_train_config({**raw, "train": {**raw["train"], "allow_small_contrastive_batch": True}})
    assert contrastive_batch_warning(cfg, 2) == (
        "djray train: WARNING gradient_accumulation_steps 2: the itc loss sees 4 negatives per step "
        "(micro batch 2 × 2 workers), not train.batch_size 8 (train.allow_small_contrastive_batch: true)")
    assert contrastive_batch_warning(parse_train_config(train_config(tmp_path / "o")), 2) is None


def _rewrite_footers(src, dst, change):
    """A copy of the governed data whose djray.geometry footer records are passed through change(rel, record)."""
    import json

    (dst / "data").mkdir(parents=True)
    for f in sorted((src / "data").glob("*.parquet")):
        t = pq.read_table(f)
        meta = dict(t.schema.metadata)
        meta[S.META_GEOMETRY] = json.dumps(change(f.name, json.loads(meta[S.META_GEOMETRY]))).encode()
        pq.write_table(t.replace_schema_metadata(meta), dst / "data" / f.name)
    return dst


def test_the_whole_geometry_record_is_checked(governed, train_config, tmp_path):
    import PIL

    from djray.geometry import GEOMETRY

    cfg, plan = _plan(train_config(tmp_path / "o"))
    assert {k: plan.footer_geometry[k] for k in GEOMETRY} == GEOMETRY
    assert plan.footer_geometry["pil_version"] == PIL.__version__ and plan.max_pixels == 89_478_485
    cases = {
        "interp": (lambda rel, g: {**g, "interpolation": "bilinear"}, r"interpolation: 'bilinear' → 'bicubic'"),
        "resize": (lambda rel, g: {**g, "resize": "longer_side"}, r"resize: 'longer_side' → 'shorter_side'"),
        "crop": (lambda rel, g: {**g, "crop": "random"}, r"crop: 'random' → 'center'"),
        "pil": (lambda rel, g: {**g, "pil_version": "9.0.0"}, rf"pil_version: '9.0.0' → '{PIL.__version__}'"),
        "old": (lambda rel, g: {k: v for k, v in g.items() if k != "pil_version"},
                r"pil_version: '<not recorded>'"),
        "extra": (lambda rel, g: {**g, "antialias": False}, r"antialias: False → '<unknown here>'"),
    }
    for name, (change, message) in cases.items():
        data = _rewrite_footers(governed, tmp_path / name, change)
        for mode in ("kept", "rescore"):
            with pytest.raises(TrainDataError, match=r"geometry mismatch: .*" + message):
                _plan(train_config(tmp_path / "o", data={"path": str(data)}, patches={"mode": mode}))
    mixed = _rewrite_footers(governed, tmp_path / "mixed",
                             lambda rel, g: {**g, "max_pixels": 1000} if rel.startswith("00001") else g)
    with pytest.raises(TrainDataError, match=r"governed with different geometry \(max_pixels\)"):
        _plan(train_config(tmp_path / "o", data={"path": str(mixed)}))
    # full images need no patch mapping: the data still trains
    assert _plan(train_config(tmp_path / "o", data={"path": str(tmp_path / "pil")}, patches={"mode": "full"}))[1]


def test_the_recorded_pixel_limit_is_used(governed, train_config, tmp_path):
    data = _rewrite_footers(governed, tmp_path / "small", lambda rel, g: {**g, "max_pixels": 1000})
    cfg, plan = _plan(train_config(tmp_path / "o", data={"path": str(data)}))
    assert plan.max_pixels == 1000
    rows, _ = open_stream(cfg, plan, 0, 1).take(2)
    with pytest.raises(TrainDataError, match=r"image cannot be decoded .*decompression_bomb.*> max_pixels 1000"):
        _builder(cfg, plan)(rows)


def test_trainer_pixels_are_the_pixels_governance_scored(governed, train_config, tmp_path):
    """Re-score the trainer's crops with the governance fixture's scorer (same model, seed, size): the scores must be
    the stored patch_scores, so a patch index names the same pixels in both."""
    from djray.ops.vision.dino_patch import DinoPatchScorer
    from djray.ops.vision.params import VisionParams

    cfg, plan = _plan(train_config(tmp_path / "o", data={"hflip": 0.0, "shuffle": False}))
    rows, _ = open_stream(cfg, plan, 0, 1).take(6)
    batch = _builder(cfg, plan)(rows)
    op = DinoPatchScorer(VisionParams(model="test_vit", weights="random", image_size=64, ratio=0.5,
                                      batch_size=8, precision="fp32"))
    op.setup()
    src = [dict(key=r[S.KEY], src_shard="t.tar", src_index=i, _shard_order=0, caption_raw="c")
           for i, r in enumerate(rows)]
    t = pa.Table.from_pylist(src, schema=S.SOURCE_SCHEMA).append_column(
        S.PIXELS, pa.array([p.tobytes() for p in batch.pixels], type=pa.binary(64 * 64 * 3)))
    out = op(t)
    for i, row in enumerate(rows):
        np.testing.assert_allclose(out[S.PATCH_SCORES][i].as_py(), row[S.PATCH_SCORES], rtol=1e-5, atol=1e-7,
                                   err_msg=row[S.KEY])
    # a one-pixel shift of the crop is caught
    shifted = np.roll(batch.pixels, 1, axis=2)
    t2 = t.set_column(t.schema.get_field_index(S.PIXELS), S.PIXELS,
                      pa.array([p.tobytes() for p in shifted], type=pa.binary(64 * 64 * 3)))
    moved = op(t2)
    assert not all(np.allclose(moved[S.PATCH_SCORES][i].as_py(), rows[i][S.PATCH_SCORES], rtol=1e-5, atol=1e-7)
                   for i in range(len(rows)))
