"""Fixtures for the trainer tests: governed output made by the real pipeline, a cached DeepSpeed extension dir."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]
# DeepSpeed JIT-compiles extensions here (repo-ignored), so repeated test runs reuse them.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions"))

pytest.importorskip("torch")
from djray._compat import patch_torchvision  # noqa: E402

patch_torchvision()  # before anything imports torchvision (open_clip, timm)
pytest.importorskip("open_clip")
pytest.importorskip("deepspeed")

IMAGE_SIZE = 64  # clip_tiny: 64 px, 16 px patches → a 4×4 grid


@pytest.fixture(scope="session")
def governed(ray_cluster, tmp_path_factory) -> Path:
    """24 synthetic samples in 4 shards, governed by the pipeline with a vision section (test_vit, random weights) at
    clip_tiny's grid: OUTPUT/data/*.parquet with patch_scores / patch_idx (k = 8 of 16) and the geometry footer."""
    from djray import pipeline
    from djray.config import parse_config
    from djray.sample_data import write_sample_corpus

    root = tmp_path_factory.mktemp("train_governed")
    write_sample_corpus(str(root / "corpus"), 24, 4, "webdataset", seed=11)
    manifest = pipeline.run(parse_config({
        "input": {"path": str(root / "corpus"), "format": "webdataset", "rows_per_block": 8},
        "output": {"path": str(root / "out")},
        "vision": {"model": "test_vit", "weights": "random", "image_size": IMAGE_SIZE, "ratio": 0.5,
                   "batch_size": 8, "precision": "fp32"},
    }), progress=False, log=lambda m: None)
    assert manifest["status"] == "complete" and manifest["rows_kept"] >= 16
    return root / "out"


@pytest.fixture(scope="session")
def governed_rows(governed) -> int:
    return sum(pq.read_metadata(f).num_rows for f in (governed / "data").glob("*.parquet"))


@pytest.fixture
def train_config(governed):
    """make_config bound to the governed fixture: train_config(out, **sections) → raw config dict."""
    return lambda out, **sections: make_config(governed, out, **sections)


def make_config(governed: Path, out: Path, **sections) -> dict:
    """A clip_tiny training config on the governed fixture; `sections` replace/extend top-level sections."""
    raw = {
        "data": {"path": str(governed), "num_workers": 2},
        "model": {"arch": "clip_tiny"},
        "patches": {"mode": "kept"},
        "train": {"batch_size": 8, "steps": 4, "lr": 1e-3, "warmup": 1},
        "deepspeed": {"zero_stage": 1},
        "output": {"path": str(out)},
    }
    for name, value in sections.items():
        raw[name] = {**raw.get(name, {}), **value} if isinstance(value, dict) else value
    return raw
