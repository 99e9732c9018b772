"""ClipEmbedder in process: real open_clip ViT-B-16 architecture with seeded random weights."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import sieve_data as D
from corpus import enc, noise

from djray import schema as S
from djray._compat import patch_torchvision
from djray.config import parse_config
from djray.geometry import canonical_crop, open_image
from djray.ops.decode import DecodeOp, DecodeParams
from djray.ops.sieve.inprocess import run_sieves
from djray.ops.sieve.semdedup import SemDedupParams
from djray.ops.vision.clip_embed import ClipEmbedder, ClipParams
from djray.registry import phase_a_ops
from djray.runtime.fuse import FusedOp, fuse_stateful

patch_torchvision()
torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")


def _batch(images: list[bytes | None], captions: list[str | None], size: int = 224) -> pa.Table:
    n = len(images)
    src = pa.table({S.KEY: [f"k{i}" for i in range(n)], S.SRC_SHARD: ["s"] * n, S.SRC_INDEX: list(range(n)),
                    S.IMAGE: pa.array(images, pa.binary()), S.CAPTION_RAW: captions,
                    S.REJECT_STAGE: pa.nulls(n, pa.string()), S.REJECT_REASON: pa.nulls(n, pa.string()),
                    S.REJECT_DETAIL: pa.nulls(n, pa.string())})
    op = DecodeOp(DecodeParams(image_size=size))
    op.setup()
    from djray.ops.base import apply_op_output
    return apply_op_output(src, op, op(src))


@pytest.fixture(scope="module")
def embedder():
    op = ClipEmbedder(ClipParams(weights="random", batch_size=2), vision_image_size=224)
    op.setup()
    return op


def test_embeddings_are_the_model_forward_on_the_canonical_crop(embedder):
    images = [enc(noise(300, 200, seed=i), "JPEG") for i in range(3)] + [b"not an image"]
    captions = ["a red square", "two dogs", None, "x"]
    batch = _batch(images, captions)
    out = embedder(batch)
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None).eval()  # the same seeded random init
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    crops = np.stack([canonical_crop(open_image(b, 10**9), 224) for b in images[:3]])
    x = (torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255 - mean) / std
    tok = open_clip.get_tokenizer("ViT-B-16")
    with torch.no_grad():
        img = model.encode_image(x, normalize=True).numpy()
        txt = model.encode_text(tok(["a red square", "two dogs", ""]), normalize=True).numpy()
    got_img = np.array(out[S.CLIP_IMAGE_EMBEDDING].to_pylist()[:3], np.float32)
    got_txt = np.array(out[S.CLIP_TEXT_EMBEDDING].to_pylist()[:3], np.float32)
    assert np.allclose(got_img, img, atol=2e-5) and np.allclose(got_txt, txt, atol=2e-5)
    score = out[S.CLIP_SCORE].to_pylist()
    assert np.allclose(score[:3], (img * txt).sum(axis=1), atol=2e-5) and score[3] is None  # rejected at decode
    assert out[S.CLIP_IMAGE_EMBEDDING].type == pa.list_(pa.float32())
    rec = embedder.describe()
    assert rec["preprocessing"]["source_column"] == S.PIXELS and rec["model"]["state_sha256"]
    assert rec["preprocessing"]["mean"] == list(open_clip.OPENAI_DATASET_MEAN)


def test_calls_on_several_threads_at_once_equal_calls_one_after_another(embedder):
    from concurrent.futures import ThreadPoolExecutor

    batches = [_batch([enc(noise(240, 200, seed=10 * b + i), "JPEG") for i in range(2)],
                      [f"caption {b} {i} " * (b + 1) for i in range(2)]) for b in range(3)]
    alone = [embedder(b) for b in batches]
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(embedder, batches * 2))
    assert ClipEmbedder.thread_safe
    for i, out in enumerate(together):
        for name in (S.CLIP_IMAGE_EMBEDDING, S.CLIP_TEXT_EMBEDDING, S.CLIP_SCORE):
            assert out[name].to_pylist() == alone[i % 3][name].to_pylist(), name


def test_a_multi_call_actors_forwards_share_one_pool_and_equal_calls_in_series(embedder):
    """With `calls` > 1 (runtime/resources.py) the chunks of every call run on one pool of `calls` threads."""
    import dataclasses
    from concurrent.futures import ThreadPoolExecutor

    threaded = ClipEmbedder(ClipParams(weights="random", batch_size=2), vision_image_size=224)
    threaded.resources = dataclasses.replace(embedder.resources, calls=2)
    threaded.setup()
    threaded.model.load_state_dict(embedder.model.state_dict())
    assert threaded.forwards is not None and threaded.__getstate__()["forwards"] is None  # threads never travel
    batches = [_batch([enc(noise(230, 210, seed=40 + 5 * b + i), "JPEG") for i in range(5)],
                      [f"photo {b} {i}" for i in range(5)]) for b in range(2)]
    alone = [embedder(b) for b in batches]  # 5 rows at batch_size 2: three forwards per call
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(threaded, batches * 2))
    for i, out in enumerate(together):
        for name in (S.CLIP_IMAGE_EMBEDDING, S.CLIP_TEXT_EMBEDDING, S.CLIP_SCORE):
            assert out[name].to_pylist() == alone[i % 2][name].to_pylist(), name


def test_other_input_size_gets_its_own_crop_from_the_one_decode():
    base = {"input": {"path": "/x", "format": "webdataset"}, "output": {"path": "/o"}}
    same = phase_a_ops(parse_config({**base, "vision": {"weights": "random"}, "clip": {"weights": "random"}}))
    assert same[0].params.clip_image_size is None and same[-1].pixels == S.PIXELS
    other = phase_a_ops(parse_config({**base, "vision": {"weights": "random", "image_size": 256},
                                      "clip": {"weights": "random"}}))
    decode, clip = other[0], other[-1]
    assert decode.params.image_size == 256 and decode.params.clip_image_size == 224
    assert clip.pixels == S.CLIP_PIXELS and clip.reads[0] == S.CLIP_PIXELS
    alone = phase_a_ops(parse_config({**base, "clip": {"weights": "random"}}))
    assert alone[0].params.image_size is None and alone[-1].pixels == S.CLIP_PIXELS
    batch = _batch([enc(noise(320, 240), "PNG")], ["c"], size=256)
    assert S.CLIP_PIXELS not in batch.column_names
    op = DecodeOp(decode.params)
    out = op(batch)
    crop = np.frombuffer(out[S.CLIP_PIXELS][0].as_py(), np.uint8).reshape(224, 224, 3)
    assert np.array_equal(crop, canonical_crop(open_image(enc(noise(320, 240), "PNG"), 10**9), 224))


def test_fused_actor_equals_the_ops_one_after_another(embedder):
    from djray.ops.base import apply_op_output
    from djray.ops.vision.dino_patch import DinoPatchScorer
    from djray.ops.vision.params import VisionParams

    dino = DinoPatchScorer(VisionParams(model="vit_tiny_patch16_224", weights="random", batch_size=2))
    dino.resources = embedder.resources
    fused = fuse_stateful([dino, embedder])
    assert len(fused) == 1 and isinstance(fused[0], FusedOp) and fused[0].name == "dino_patch+clip_embed"
    batch = _batch([enc(noise(240, 240, seed=7), "JPEG"), enc(noise(260, 200, seed=8), "JPEG")], ["a", "b"])
    fused[0].setup()
    one = fused[0].run(batch)
    two = apply_op_output(batch, dino, dino(batch))
    two = apply_op_output(two, embedder, embedder(two))
    assert one.equals(two)
    embedder.resources = type(embedder.resources)(num_cpus=0.25)
    assert len(fuse_stateful([dino, embedder])) == 2  # other resources: two pools


def test_float16_storage_would_change_semdedup_decisions():
    """Why the clip embeddings are stored as float32: rounded to float16, the cosines to the centroid move by ~1e-4,
    enough to reorder near-identical members of a cluster, so another copy of a duplicate pair survives (at any ε
    that catches the pair). float32 storage reproduces the decisions made on the model's output."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(2000, 512))  # ViT-B/16 embedding width; 2000 pairs at cos ≈ 0.999
    x = np.concatenate([base, base + 0.05 * rng.normal(size=base.shape)]).astype(np.float32)
    keys = [f"k{i:05d}" for i in range(len(x))]

    def kept(emb: np.ndarray) -> set[str]:
        table = pa.table({S.KEY: keys, S.CLIP_IMAGE_EMBEDDING: pa.array(list(emb), pa.list_(pa.float32()))})
        out = run_sieves([SemDedupParams(eps=0.05, n_clusters=8, embedding="clip_image")], table)
        return D.kept_keys(out)

    kept32, kept16 = kept(x), kept(x.astype(np.float16).astype(np.float32))
    assert len(kept32) < 2100 and len(kept16) < 2100  # about one of every pair either way (a few pairs straddle
    assert kept32 != kept16  # two clusters) ... but not always the same one


def test_file_weights_load_with_checksums_and_missing_files_fail_before_work(tmp_path):
    from djray.models import weights as W
    from djray.models.clip import build_clip

    model, desc = build_clip("ViT-B-16", "random", seed=3)
    path = tmp_path / "clip.pt"
    torch.save(model.state_dict(), path)
    op = ClipEmbedder(ClipParams(weights=f"file:{path}"))
    op.setup()
    rec = op.describe()["model"]
    assert rec["file_sha256"] == W.sha256_file(str(path)) and rec["state_sha256"] == desc["state_sha256"]
    with pytest.raises(ValueError, match=r"clip\.weights: file not found"):
        ClipParams(weights=f"file:{tmp_path}/missing.pt").validate_sources()
    with pytest.raises(ValueError, match="unknown open_clip model"):
        ClipParams(model="ViT-Q-99")


def test_the_precision_probe_times_the_image_towers_first_block(embedder, monkeypatch):
    seen = []
    block = embedder.model.visual.transformer.resblocks[0]
    real = block.forward
    monkeypatch.setattr(block, "forward", lambda x, *a, **k: seen.append(tuple(x.shape)) or real(x, *a, **k))
    embedder._probe_run()("fp32")
    assert seen == [(8, 197, 768)]  # ViT-B/16 at 224 px: 196 patches + [CLS], width 768
