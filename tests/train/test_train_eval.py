"""Evaluation metrics on constructed embeddings, and loading a checkpoint for full-image inference."""

from __future__ import annotations

import numpy as np
import pytest

from djray.train.eval import retrieval_metrics, zero_shot_metrics


def _unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_identical_image_and_text_embeddings_retrieve_perfectly():
    emb = _unit(np.random.default_rng(0).normal(size=(20, 16)))
    m = retrieval_metrics(emb, emb.copy())
    assert m == {"image_to_text": {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0},
                 "text_to_image": {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0}}


def test_retrieval_with_a_known_swap():
    """Texts 0 and 1 swapped (each image's own text is second best), the rest identical: R@1 = 8/10, R@5 = 1."""
    emb = np.eye(10)
    txt = emb.copy()
    txt[[0, 1]] = 0.6 * emb[[1, 0]] + 0.4 * emb[[0, 1]]  # text 0 is closer to image 1 than to image 0
    m = retrieval_metrics(emb, _unit(txt))
    assert m["image_to_text"]["R@1"] == pytest.approx(0.8) and m["image_to_text"]["R@5"] == 1.0
    assert m["text_to_image"]["R@1"] == pytest.approx(0.8) and m["text_to_image"]["R@10"] == 1.0


def test_zero_shot_with_a_known_confusion():
    """3 classes on the axes; image 2 (label 2) sits nearest class 0, second nearest its own: top-1 2/3, top-2 all."""
    classes = np.eye(3)
    images = _unit([[1, 0, 0], [0, 1, 0], [0.9, 0.1, 0.5]])
    m = zero_shot_metrics(images, classes, np.array([0, 1, 2]))
    assert m["top1"] == pytest.approx(2 / 3) and m["top5"] == 1.0
    # 8 classes: image A (label 7) is nearest class 0, then its own class → top-1 miss, top-5 hit;
    # image B (label 7) has five classes above its own → top-5 miss too
    a = [1.0, 0.05, 0, 0, 0, 0, 0, 0.1]
    b = [0.9, 0.8, 0.7, 0.6, 0.5, 0, 0, 0.1]
    m = zero_shot_metrics(_unit([a, b]), np.eye(8), np.array([7, 7]))
    assert m == {"top1": 0.0, "top5": 0.5}


def test_eval_encodes_full_images_with_the_recorded_pixel_limit(train_config, tmp_path, monkeypatch):
    """evaluate() feeds the image tower every patch (no patch indices) of the canonical crops, decoded with the
    max_pixels the checkpoint recorded."""
    import io
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from PIL import Image

    from djray.geometry import canonical_crop, open_image
    from djray.train import eval as E
    from djray.train.checkpoint import META, MODEL_FILE
    from djray.train.config import parse_train_config
    from djray.train.model import CLIP

    rng = np.random.default_rng(3)
    images = []
    for w, h in ((90, 70), (64, 120), (200, 64)):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
        images.append(buf.getvalue())
    pq.write_table(pa.table({"image": images, "caption": ["a", "b", "c"]}), tmp_path / "ret.parquet")
    cfg = parse_train_config(train_config(tmp_path / "o", eval={"retrieval": {"path": str(tmp_path / "ret.parquet")},
                                                                "batch_size": 2}))
    arch = cfg.model.resolved()
    tag = tmp_path / "ck" / "step_00000001"
    tag.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(CLIP(arch).state_dict(), tag / MODEL_FILE)
    meta = {"step": 1, "arch": arch.as_dict(), "loss": "itc", "max_pixels": 20_000}
    (tag / META).write_text(json.dumps(meta))

    calls = []
    encode = CLIP.encode_image

    def spy(self, pixels, keep_idx=None, normalize=True):
        calls.append((pixels.clone(), keep_idx))
        return encode(self, pixels, keep_idx, normalize)

    monkeypatch.setattr(CLIP, "encode_image", spy)
    result = E.evaluate(cfg, str(tag), log=lambda m: None)
    assert result["patches"] == "full" and result["retrieval"]["num_pairs"] == 3
    assert [k for _, k in calls] == [None, None]  # batches of 2 + 1, never a patch selection
    seen = torch.cat([p for p, _ in calls]).numpy()
    want = np.stack([canonical_crop(open_image(b, 10**9), arch.image_size) for b in images])
    np.testing.assert_array_equal(seen, want)

    # the recorded limit is the one eval decodes with: 200×64 = 12,800 px passes 20,000 but not 10,000
    (tag / META).write_text(json.dumps({**meta, "max_pixels": 10_000}))
    with pytest.raises(Exception, match="max_pixels 10000"):
        E.evaluate(cfg, str(tag), log=lambda m: None)
