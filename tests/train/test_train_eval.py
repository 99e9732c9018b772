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
