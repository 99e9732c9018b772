"""djray's ops as Ray Data UDFs: a user's own pipeline (`ray.data.read_parquet` → decode → dino_patch with the class
head → clip) gives, row by row, the columns `djray run` writes for the same data; rejected rows come back with their
stage and reason; parameters are checked by the config's typed sections."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import djray
from corpus import image_bytes, write_parquet_shard
from djray import schema as S
from djray._compat import patch_torchvision
from djray.sample_data import make_sample
from governed import output_table

patch_torchvision()
pytest.importorskip("timm")
pytest.importorskip("open_clip")

COLUMNS = pa.schema([("key", pa.string()), ("image", pa.binary()), ("caption", pa.string())])
ACTOR = {"num_cpus": 0.5, "pool_size": 1}
VISION = {"model": "test_vit", "weights": "random", "image_size": 160, "ratio": 0.3, "precision": "fp32",
          "batch_size": 4, "resources": ACTOR, "head": {"kind": "dino_linear", "weights": "random", "threshold": 0.0,
                                                         "top_k": 2}}
CLIP = {"weights": "random", "precision": "fp32", "batch_size": 4, "resources": ACTOR}
BAD = {"bad_corrupt": (b"not an image", "a caption", "corrupt_image"),
       "bad_nocap": (image_bytes((120, 90)), "  ", "empty_caption"),
       "bad_tiny": (image_bytes((16, 16)), "a tiny image", "image_too_small")}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("udf_corpus")
    good = [{"key": f"s{i:02d}", "image": (s := make_sample(i, seed=4))["image"], "caption": s["caption"]}
            for i in range(8)]
    bad = [{"key": k, "image": img, "caption": cap} for k, (img, cap, _) in BAD.items()]
    write_parquet_shard(root / "00000.parquet", good[:5] + bad[:1], COLUMNS)
    write_parquet_shard(root / "00001.parquet", good[5:] + bad[1:], COLUMNS)
    return root


def _by_key(table: pa.Table) -> dict[str, dict]:
    return {r["key"]: r for r in table.to_pylist()}


def test_user_pipeline_matches_djray_run(ray_cluster, corpus, tmp_path):
    import ray

    dino = djray.udf("dino_patch", **VISION)
    clip = djray.udf("clip", **CLIP)
    decode = djray.udf("decode", feeds=[dino, clip])
    assert decode.crops == {S.PIXELS: 160, S.CLIP_PIXELS: 224}
    ds = ray.data.read_parquet(str(corpus))
    for step in (decode, dino, clip):
        ds = ds.map_batches(step, **step.map_batches_kwargs())
    mine = pa.concat_tables(ray.get(ds.to_arrow_refs()))
    assert mine.num_rows == 8 + len(BAD)  # nothing dropped

    out = tmp_path / "out"
    manifest = djray.run({"input": {"path": str(corpus), "format": "parquet",
                                    "columns": {"key": "key", "image": "image", "caption": "caption"}},
                          "output": {"path": str(out)}, "vision": VISION, "clip": CLIP}, progress=False)
    assert manifest.rows_kept == 8 and manifest.rows_rejected == len(BAD)
    data, rejects, rows = _by_key(output_table(out, "data")), _by_key(output_table(out, "rejects")), _by_key(mine)

    for key, (_, _, reason) in BAD.items():
        assert (rows[key]["stage"], rows[key]["reason"]) == ("decode", reason) == \
            (rejects[key]["stage"], rejects[key]["reason"])
        assert rows[key]["detail"] == rejects[key]["detail"]
        assert rows[key][S.PATCH_SCORES] is None and rows[key][S.CLIP_SCORE] is None
    assert set(data) == {k for k in rows if k not in BAD}
    for key, want in data.items():
        got = rows[key]
        assert got["reason"] is None and got["stage"] is None
        for col in (S.IMG_WIDTH, S.IMG_HEIGHT, S.IMG_SHA256, S.PATCH_SIZE, S.GRID_H, S.GRID_W, S.PATCH_IDX,
                    S.VIS_EVIDENCE):
            assert got[col] == want[col], (key, col)
        assert [c["label"] for c in got[S.VIS_CLASSES]] == [c["label"] for c in want[S.VIS_CLASSES]]
        for col, tol in ((S.PATCH_SCORES, 1e-5), (S.VIS_EMBEDDING, 1e-4), (S.CLIP_SCORE, 1e-4)):
            np.testing.assert_allclose(got[col], want[col], rtol=tol, atol=tol * 1e-2, err_msg=f"{key} {col}")
        assert got["caption"] == want["caption_raw"]  # the user's columns are left as they were
    assert all(len(r[S.VIS_CLASSES]) == 2 and r[S.VIS_EVIDENCE] for r in data.values())  # the class head ran


def test_in_process_decode_then_rewrite_keeps_rejects():
    decode = djray.udf("decode", image_size=32)
    rewrite = djray.udf("caption_rewrite", mode="concat")
    assert not isinstance(decode, type) and not isinstance(rewrite, type)  # stateless: Ray tasks
    batch = pa.table({"image": [image_bytes((64, 48)), b"junk", image_bytes((64, 48))],
                      "caption": ["A red box. ", "x", "a tree"],
                      "vis_evidence": [["box", "red"], ["x"], []]})
    out = rewrite(decode(batch))
    rows = out.to_pylist()
    assert [r["reason"] for r in rows] == [None, "corrupt_image", None]
    assert [r["caption"] for r in rows] == ["A red box, box, red", None, "a tree"]
    assert [r["caption_raw"] for r in rows] == ["A red box. ", "x", "a tree"]
    assert [r["caption_source"] for r in rows] == ["concat", None, "original"]
    assert out.schema.field(S.PIXELS).type == pa.binary(32 * 32 * 3)
    assert not {S.REJECT_REASON, S.KEY, S.SRC_INDEX, S.CAPTION_INVALID_UTF8} & set(out.column_names)


def test_resources_and_map_batches_kwargs_follow_the_section(ray_cluster):
    import ray

    dino = djray.udf("dino_patch", weights="random", batch_size=16,
                     resources={"num_gpus": 1, "num_cpus": 2, "pool_size": 3})
    assert isinstance(dino, type) and dino.stateful
    assert (dino.resources.num_gpus, dino.resources.num_cpus, dino.resources.pool_size) == (1, 2, 3)
    kw = dino.map_batches_kwargs()
    assert kw["batch_format"] == "pyarrow" and kw["num_gpus"] == 1 and kw["batch_size"] == 16
    assert isinstance(kw["compute"], ray.data.ActorPoolStrategy) and kw["compute"].max_size == 3
    assert djray.udf("decode").map_batches_kwargs()["batch_size"] is None

    # keys left out are resolved against the live cluster, as `djray run` resolves them (no GPU here)
    kw = djray.udf("dino_patch", weights="random").map_batches_kwargs()
    cpus = ray.cluster_resources()["CPU"]
    size = kw["compute"].max_size
    assert kw["compute"].min_size == size and size >= 1 and "num_gpus" not in kw
    assert 0 < kw["num_cpus"] * size <= cpus - 1  # one CPU left for the read / decode tasks


@pytest.mark.parametrize("name, params, message", [
    ("dino_patch", {"ratoi": 0.5}, "vision.ratoi: unknown key"),
    ("dino_patch", {"ratio": 2}, "vision.ratio: Input should be less than or equal to 1"),
    ("dino_patch", {"head": {"kind": "dino_linear", "treshold": 1}}, "vision.head.treshold: unknown key"),
    ("clip", {"precision": "fp8"}, "clip.precision"),
    ("decode", {"min_side": 0}, "decode.min_side"),
    ("caption_rewrite", {"mode": "poem"}, "text.mode"),
    ("caption", {}, "unknown op 'caption'"),
    ("clip", {"feeds": [None]}, "feeds= is a decode parameter"),
])
def test_bad_params_are_config_errors_naming_the_key(name, params, message):
    with pytest.raises(djray.ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        djray.udf(name, **params)
