"""DinoPatchScorer against an independent float64 NumPy ViT written here from the model's own parameters."""

from __future__ import annotations

import dataclasses
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pyarrow as pa
import pytest

from djray import schema as S
from djray._compat import patch_torchvision
from djray.ops.base import apply_op_output
from djray.ops.vision.dino_patch import MISSING_PIXELS, DinoPatchScorer
from djray.ops.vision.params import VisionParams

patch_torchvision()
torch = pytest.importorskip("torch")


# ---- inputs ------------------------------------------------------------------------------------------------------
def make_images(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Structured synthetic crops: a smooth colour gradient, a bright disc and noise (so attention is not flat)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.3)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)[..., None] * rng.uniform(0.3, 1.0, 3)
        grad = np.stack([yy, xx, 1 - yy], -1) * rng.uniform(0.2, 0.8, 3)
        img = 0.6 * grad + 0.6 * disc + 0.15 * rng.standard_normal((size, size, 3))
        out.append((np.clip(img, 0, 1) * 255).astype(np.uint8))
    return out


def make_batch(images: list[np.ndarray | None], size: int, rejected: tuple[int, ...] = ()) -> pa.Table:
    rows = [dict(key=f"k{i}", src_shard="s.tar", src_index=i, _shard_order=0, caption_raw="c",
                 _reject_stage="decode" if i in rejected else None,
                 _reject_reason="corrupt_image" if i in rejected else None) for i in range(len(images))]
    t = pa.Table.from_pylist(rows, schema=S.SOURCE_SCHEMA)
    px = [None if im is None or i in rejected else im.tobytes() for i, im in enumerate(images)]
    return t.append_column(S.PIXELS, pa.array(px, type=pa.binary(size * size * 3)))


# ---- independent float64 reference ------------------------------------------------------------------------------
_erf = np.frompyfunc(math.erf, 1, 1)


def _gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))


def _ln(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def reference(model, img: np.ndarray, mean, std):
    """Float64 ViT forward from the state dict. Returns (last-block CLS logits (H, N), [CLS] of last 4 blocks after
    the final norm (4, D), number of prefix tokens)."""
    sd = {k: v.detach().double().cpu().numpy() for k, v in model.state_dict().items()}
    D = sd["cls_token"].shape[-1]
    depth = len(model.blocks)
    H = model.blocks[0].attn.num_heads
    hd = D // H
    eps = model.norm.eps
    p = model.patch_embed.patch_size[0]
    s = img.shape[0]
    g = s // p
    x = (img.astype(np.float64) / 255.0 - np.asarray(mean)) / np.asarray(std)
    x = x.transpose(2, 0, 1)  # (3, S, S)
    patches = x.reshape(3, g, p, g, p).transpose(1, 3, 0, 2, 4).reshape(g * g, 3 * p * p)
    tok = patches @ sd["patch_embed.proj.weight"].reshape(D, -1).T + sd["patch_embed.proj.bias"]
    prefix = [sd["cls_token"][0]] + ([sd["reg_token"][0]] if "reg_token" in sd else [])
    pos = sd["pos_embed"][0]
    if model.no_embed_class:
        x = np.concatenate(prefix + [tok + pos])
    else:
        x = np.concatenate(prefix + [tok]) + pos
    npt = sum(a.shape[0] for a in prefix)
    N = x.shape[0]
    cls4 = []
    for i in range(depth):
        b = f"blocks.{i}."
        y = _ln(x, sd[b + "norm1.weight"], sd[b + "norm1.bias"], eps)
        qkv = (y @ sd[b + "attn.qkv.weight"].T + sd[b + "attn.qkv.bias"]).reshape(N, 3, H, hd)
        q, k, v = (qkv[:, j].transpose(1, 0, 2) for j in range(3))  # (H, N, hd)
        logits = q @ k.transpose(0, 2, 1) * hd ** -0.5  # (H, N, N)
        if i == depth - 1:
            cls_logits = logits[:, 0, :]
        a = (_softmax(logits) @ v).transpose(1, 0, 2).reshape(N, D)
        a = a @ sd[b + "attn.proj.weight"].T + sd[b + "attn.proj.bias"]
        x = x + a * sd.get(b + "ls1.gamma", 1.0)
        h = _ln(x, sd[b + "norm2.weight"], sd[b + "norm2.bias"], eps)
        h = _gelu(h @ sd[b + "mlp.fc1.weight"].T + sd[b + "mlp.fc1.bias"])
        h = h @ sd[b + "mlp.fc2.weight"].T + sd[b + "mlp.fc2.bias"]
        x = x + h * sd.get(b + "ls2.gamma", 1.0)
        if i >= depth - 4:
            cls4.append(_ln(x[0], sd["norm.weight"], sd["norm.bias"], eps))
    return cls_logits, np.stack(cls4), npt


def ref_scores(cls_logits, npt, aggregation):
    if aggregation == "mean_logit":
        return cls_logits[:, npt:].mean(0)
    probs = _softmax(cls_logits)[:, npt:]  # softmax over ALL tokens, prefix dropped afterwards
    if aggregation == "mean_prob":
        return probs.mean(0)
    if aggregation == "max_prob":
        return probs.max(0)
    return probs[int(aggregation.split(":")[1])]


def topk_ref(scores, k):
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return sorted(order[:k])


def perturb(model, seed: int = 0) -> None:
    """timm initialises biases to 0, LayerNorm to (1, 0), layer scale to 1e-5 and cls_token near 0: randomise them so
    that a forgotten bias, norm or scale cannot go unnoticed by the reference comparison."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("gamma"):
                p.copy_(0.5 + 0.2 * noise)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias") or name in ("cls_token", "reg_token", "pos_embed"):
                p.add_(0.2 * noise)


def run(params: VisionParams, images, rejected=(), perturbed: bool = True):
    op = DinoPatchScorer(params)
    op.setup()
    if perturbed:
        perturb(op.model, params.seed)
    batch = make_batch(images, params.image_size, rejected)
    out = op(batch)
    return op, batch, out


# ---- tests -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "model,size",
    [("vit_small_patch16_224.dino", 224), ("test_vit", 160), ("vit_tiny_patch16_224", 288),
     ("vit_small_patch14_reg4_dinov2", 224)],  # the last one: 4 register tokens, no_embed_class, layer scale
)
def test_scores_match_float64_reference(model, size):
    params = VisionParams(model=model, weights="random", image_size=size, aggregation="mean_logit", seed=3,
                          precision="fp32")
    images = make_images(1 if "small" in model else 2, size, seed=size)
    op, batch, out = run(params, images)
    g = size // op.backbone["patch_size"]
    assert out[S.GRID_H].to_pylist() == [g] * len(images) == out[S.GRID_W].to_pylist()
    refs = [reference(op.model, img, op.backbone["mean"], op.backbone["std"]) for img in images]
    for i, (cls_logits, cls4, npt) in enumerate(refs):
        assert npt == op.model.num_prefix_tokens
        got = np.asarray(out[S.PATCH_SCORES][i].as_py())
        assert got.shape == (g * g,)
        np.testing.assert_allclose(got, ref_scores(cls_logits, npt, "mean_logit"), atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(out[S.VIS_EMBEDDING][i].as_py()), cls4[-1], atol=1e-4, rtol=1e-4)
    # probabilities from the same model: recompute through the op's aggregation with mean_prob
    op.params = params.model_copy(update={"aggregation": "mean_prob"})
    out = op(batch)
    for i, (cls_logits, _, npt) in enumerate(refs):
        exp = ref_scores(cls_logits, npt, "mean_prob")
        got = np.asarray(out[S.PATCH_SCORES][i].as_py())
        np.testing.assert_allclose(got, exp, atol=1e-7, rtol=1e-4)
        assert got.sum() < 1.0  # prefix tokens took part in the softmax and were dropped without renormalising
        k = int(np.floor(0.5 * g * g + 0.5))
        assert out[S.PATCH_IDX][i].as_py() == topk_ref(got.tolist(), k)


@pytest.mark.parametrize("aggregation", ["mean_prob", "mean_logit", "max_prob", "head:0", "head:1"])
def test_aggregation_modes(aggregation):
    params = VisionParams(model="test_vit", weights="random", image_size=160, aggregation=aggregation, ratio=0.3,
                          precision="fp32")
    images = make_images(3, 160, seed=7)
    op, _, out = run(params, images)
    for i, img in enumerate(images):
        cls_logits, _, npt = reference(op.model, img, op.backbone["mean"], op.backbone["std"])
        exp = ref_scores(cls_logits, npt, aggregation)
        got = np.asarray(out[S.PATCH_SCORES][i].as_py())
        np.testing.assert_allclose(got, exp, atol=1e-6 if aggregation == "mean_logit" else 1e-8, rtol=1e-4)
        idx = out[S.PATCH_IDX][i].as_py()
        assert len(idx) == round(0.3 * 100) and idx == sorted(idx)
        assert idx == topk_ref(got.tolist(), len(idx))


def test_head_index_out_of_range():
    with pytest.raises(ValueError, match="heads"):
        DinoPatchScorer(VisionParams(model="test_vit", weights="random", image_size=160, aggregation="head:2")).setup()


def test_bf16_close_to_fp32(tmp_path):
    """bf16 autocast: scores close, rankings mostly equal (a peaky last-block attention, as trained DINO has)."""
    from safetensors.torch import save_file

    from djray.models.dino import build_dino

    model, _ = build_dino("vit_small_patch16_224.dino", "random", 224, seed=5)
    sd = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    sd["blocks.11.attn.qkv.weight"][: 2 * 384] *= 6.0  # sharpen q·k of the last block
    path = tmp_path / "peaky.safetensors"
    save_file(sd, str(path))
    images = make_images(3, 224, seed=11)
    outs = {}
    for prec in ("fp32", "bf16"):
        params = VisionParams(weights=f"file:{path}", precision=prec, head={"kind": "dino_linear", "weights": "random"})
        outs[prec] = run(params, images, perturbed=False)[2]
    for i in range(len(images)):
        a = np.asarray(outs["fp32"][S.PATCH_SCORES][i].as_py())
        b = np.asarray(outs["bf16"][S.PATCH_SCORES][i].as_py())
        assert a.std() > 0.5 * a.mean()  # the map is not flat
        np.testing.assert_allclose(b, a, rtol=0.15, atol=0.05 * a.max())
        ra, rb = np.argsort(np.argsort(-a)), np.argsort(np.argsort(-b))
        assert np.corrcoef(ra, rb)[0, 1] > 0.99  # Spearman
        ka, kb = set(outs["fp32"][S.PATCH_IDX][i].as_py()), set(outs["bf16"][S.PATCH_IDX][i].as_py())
        assert len(ka & kb) >= 0.95 * len(ka)
        ea = np.asarray(outs["fp32"][S.VIS_EMBEDDING][i].as_py())
        eb = np.asarray(outs["bf16"][S.VIS_EMBEDDING][i].as_py())
        assert ea @ eb / np.linalg.norm(ea) / np.linalg.norm(eb) > 0.99


def test_fp16_on_cpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        DinoPatchScorer(VisionParams(model="test_vit", weights="random", image_size=160, precision="fp16")).setup()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_half_precision_close_to_cpu_fp32(precision):
    images = make_images(4, 224, seed=2)
    ref = run(VisionParams(weights="random", precision="fp32", head={"kind": "dino_linear", "weights": "random"}),
              images)[2]
    params = VisionParams(weights="random", precision=precision, resources={"num_gpus": 1},
                          head={"kind": "dino_linear", "weights": "random"})
    op, _, out = run(params, images)
    assert op.device == "cuda"
    for i in range(len(images)):
        a = np.asarray(ref[S.PATCH_SCORES][i].as_py())
        b = np.asarray(out[S.PATCH_SCORES][i].as_py())
        np.testing.assert_allclose(b, a, rtol=0.1, atol=0.05 * a.max())
        ea = np.asarray(ref[S.VIS_EMBEDDING][i].as_py())
        eb = np.asarray(out[S.VIS_EMBEDDING][i].as_py())
        assert ea @ eb / np.linalg.norm(ea) / np.linalg.norm(eb) > 0.99


def test_rejected_rows_get_nulls_and_missing_pixels_are_rejected():
    images = make_images(4, 160, seed=1)
    images[3] = None  # alive row without pixels: contract breach → rejected by this op, not a crash
    params = VisionParams(model="test_vit", weights="random", image_size=160, head={"kind": "dino_linear",
                                                                                    "weights": "random"})
    op, batch, out = run(params, images, rejected=(1,))
    for name in op.writes:
        col = out[name]
        assert col.type == dict((f.name, f.type) for f in S.VISION_FIELDS)[name]
        assert [v is None for v in col.to_pylist()] == [False, True, False, True], name
    assert out[S.REJECT_REASON] == [None, None, None, MISSING_PIXELS]
    full = apply_op_output(batch, op, dict(out))
    assert full.column(S.REJECT_STAGE).to_pylist() == [None, "decode", None, "vision"]
    assert full.column(S.REJECT_REASON).to_pylist() == [None, "corrupt_image", None, MISSING_PIXELS]
    assert len(out[S.VIS_CLASSES][0].as_py()) == 5
    assert len(out[S.VIS_EMBEDDING][0].as_py()) == 64


def test_head_none_gives_empty_lists_and_all_rejected_batch():
    params = VisionParams(model="test_vit", weights="random", image_size=160)
    op, _, out = run(params, make_images(2, 160), rejected=(1,))
    assert out[S.VIS_CLASSES].to_pylist() == [[], None]
    assert out[S.VIS_EVIDENCE].to_pylist() == [[], None]
    out = op(make_batch(make_images(2, 160), 160, rejected=(0, 1)))
    assert all(out[n].null_count == 2 for n in op.writes)


def test_results_independent_of_batch_composition():
    params = VisionParams(model="test_vit", weights="random", image_size=160, strategy="uniform", batch_size=2)
    images = make_images(5, 160, seed=4)
    op, batch, out = run(params, images)
    for i in range(5):
        single = op(batch.slice(i, 1))
        assert single[S.PATCH_IDX].to_pylist()[0] == out[S.PATCH_IDX][i].as_py()
        np.testing.assert_allclose(single[S.PATCH_SCORES].to_pylist()[0], out[S.PATCH_SCORES][i].as_py(),
                                   rtol=1e-5, atol=1e-7)


def test_calls_on_several_threads_at_once_equal_calls_one_after_another():
    """`thread_safe`: a multi-call actor runs __call__ on several threads with one model (runtime/resources.py)."""
    from concurrent.futures import ThreadPoolExecutor

    params = VisionParams(model="test_vit", weights="random", image_size=160, batch_size=2,
                          head={"kind": "dino_linear", "weights": "random"})
    images = make_images(12, 160, seed=7)
    op, batch, _ = run(params, images)
    parts = [batch.slice(i, 3) for i in range(0, 12, 3)]
    alone = [op(b) for b in parts]
    threaded = DinoPatchScorer(params, dataclasses.replace(op.resources, calls=2))  # its forwards on 2 threads
    threaded.setup()
    threaded.model.load_state_dict(op.model.state_dict())
    assert threaded.forwards is not None and threaded.__getstate__()["forwards"] is None  # threads never travel
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(op, parts * 3)) + list(pool.map(threaded, parts * 3))
    assert DinoPatchScorer.thread_safe
    for i, out in enumerate(together):
        for name in (S.PATCH_IDX, S.VIS_CLASSES):
            assert out[name].to_pylist() == alone[i % 4][name].to_pylist(), name
        np.testing.assert_array_equal(np.array(out[S.PATCH_SCORES].to_pylist()),
                                      np.array(alone[i % 4][S.PATCH_SCORES].to_pylist()))


def test_pixel_width_mismatch_is_a_clear_error():
    op = DinoPatchScorer(VisionParams(model="test_vit", weights="random", image_size=160))
    op.setup()
    with pytest.raises(ValueError, match="image_size"):
        op(make_batch(make_images(1, 176), 176))


def test_describe_for_manifest():
    op = DinoPatchScorer(VisionParams(model="test_vit", weights="random", image_size=160,
                                      resources={"num_cpus": 2, "pool_size": 3}, batch_size=8))
    assert op.stateful and op.stage == "vision" and op.resources.pool_size == 3 and op.resources.batch_size == 8
    assert op.describe()["params"]["image_size"] == 160
    op.setup()
    d = op.describe()
    assert d["backbone"]["grid_h"] == 10 and len(d["backbone"]["state_sha256"]) == 64 and d["device"] == "cpu"
