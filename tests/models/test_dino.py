"""Building the DINO backbone: weight layouts (timm / DINO official), resampling, clear errors, forward features."""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from djray._compat import patch_torchvision
from djray.models import dino as D

patch_torchvision()
torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

ARCH = "vit_small_patch16_224.dino"


@pytest.fixture(scope="module")
def source():
    """A ViT-S/16 with random weights: the 'published' checkpoint the tests save in different layouts."""
    model, desc = D.build_dino(ARCH, "random", 224, seed=123)
    return {k: v.clone() for k, v in model.state_dict().items()}, desc


@pytest.fixture(scope="module")
def dino_ckpt(source, tmp_path_factory):
    path = tmp_path_factory.mktemp("dino") / "checkpoint.pth"
    torch.save(dino_layout(source[0]), path)
    return path


def dino_layout(sd: dict) -> dict:
    """DINO's training checkpoint: teacher (backbone.*) and student (module.backbone.*, DDP) plus DINOHead keys,
    optimizer/epoch/args entries. DINO's ViT names its backbone parameters like timm."""
    head = {"head.mlp.0.weight": torch.randn(16, 384), "head.last_layer.weight_g": torch.ones(32, 1)}
    teacher = {f"backbone.{k}": v for k, v in sd.items()} | head
    student = {f"module.backbone.{k}": v + 1.0 for k, v in sd.items()} | {f"module.{k}": v for k, v in head.items()}
    return {"teacher": teacher, "student": student, "epoch": 100, "args": argparse.Namespace(arch="vit_small")}


def assert_same(model, sd):
    got = model.state_dict()
    assert set(got) == set(sd)
    for k, v in sd.items():
        assert torch.equal(got[k], v), k


def test_file_timm_state_dict_safetensors_and_pth(tmp_path, source):
    from safetensors.torch import save_file

    sd, desc = source
    save_file(sd, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        model, d = D.build_dino(ARCH, f"file:{tmp_path / name}", 224)
        assert_same(model, sd)
        assert d["state_sha256"] == desc["state_sha256"] and len(d["file_sha256"]) == 64
        assert d["weights"] == f"file:{tmp_path / name}"


def test_file_dino_official_layout_uses_teacher(tmp_path, source, dino_ckpt):
    sd, _ = source
    path = tmp_path / "checkpoint.pth"
    model, _ = D.build_dino(ARCH, f"file:{dino_ckpt}", 224)
    assert_same(model, sd)  # teacher, not the (shifted) student
    student_only = dino_layout(sd)
    del student_only["teacher"]
    torch.save(student_only, path)
    model, _ = D.build_dino(ARCH, f"file:{path}", 224)
    assert torch.equal(model.state_dict()["norm.weight"], sd["norm.weight"] + 1.0)
    # the published backbone file (dino_deitsmall16_pretrain.pth) is a bare state dict
    torch.save(sd, path)
    assert_same(D.build_dino(ARCH, f"file:{path}", 224)[0], sd)


@pytest.mark.parametrize("size", [160, 288])
def test_pos_embed_resampled_once_at_load(source, dino_ckpt, size):
    from timm.layers import resample_abs_pos_embed

    sd, _ = source
    model, desc = D.build_dino(ARCH, f"file:{dino_ckpt}", size)
    g = size // 16
    assert (desc["grid_h"], desc["grid_w"]) == (g, g)
    expected = resample_abs_pos_embed(sd["pos_embed"], new_size=(g, g), num_prefix_tokens=1)
    got = model.state_dict()
    assert got["pos_embed"].shape == (1, 1 + g * g, 384)
    torch.testing.assert_close(got["pos_embed"], expected)
    assert torch.equal(got["pos_embed"][:, 0], sd["pos_embed"][:, 0])  # class position untouched
    for k, v in sd.items():
        if k != "pos_embed":
            assert torch.equal(got[k], v), k
    out = D.forward_dino(model, torch.randn(1, 3, size, size))
    assert out.cls_logits.shape == (1, 6, 1 + g * g)


def test_wrong_shapes_missing_keys_and_garbage_are_clear_errors(tmp_path):
    arch = "test_vit"  # 6 blocks, D=64: small and fast
    sd = D.build_dino(arch, "random", 160)[0].state_dict()
    wide = D.build_dino(arch, "random", 160, embed_dim=96)[0]
    torch.save(wide.state_dict(), tmp_path / "wide.pth")
    with pytest.raises(ValueError, match=r"vision.weights .*shape mismatch: .*96"):
        D.build_dino(arch, f"file:{tmp_path / 'wide.pth'}", 160)
    partial = {k: v for k, v in sd.items() if not k.startswith("blocks.5.")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="missing keys: blocks.5"):
        D.build_dino(arch, f"file:{tmp_path / 'partial.pth'}", 160)
    extra = dict(sd, **{"blocks.6.norm1.weight": torch.ones(64)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match="unexpected keys: blocks.6"):
        D.build_dino(arch, f"file:{tmp_path / 'extra.pth'}", 160)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00garbage" * 50)
    with pytest.raises(ValueError, match="not a readable weights file"):
        D.build_dino(arch, f"file:{tmp_path / 'junk.safetensors'}", 160)
    torch.save({"epoch": 3}, tmp_path / "empty.pth")
    with pytest.raises(ValueError, match="no tensors"):
        D.build_dino(arch, f"file:{tmp_path / 'empty.pth'}", 160)
    with pytest.raises(ValueError, match="file not found"):
        D.build_dino(arch, f"file:{tmp_path / 'absent.pth'}", 160)
    with pytest.raises(ValueError, match="unknown timm model"):
        D.build_dino("vit_nonexistent_patch16", "random", 224)


def test_random_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    a = D.build_dino("test_vit", "random", 160, seed=1)[1]["state_sha256"]
    assert torch.equal(torch.rand(1), before)
    assert a == D.build_dino("test_vit", "random", 160, seed=1)[1]["state_sha256"]
    assert a != D.build_dino("test_vit", "random", 160, seed=2)[1]["state_sha256"]


def test_unsupported_models_are_rejected():
    with pytest.raises(ValueError, match=r"no \[CLS\] token"):
        D.build_dino("test_vit2", "random", 160)  # class_token=False, one register token


@pytest.mark.parametrize("arch,size,kw", [("test_vit", 160, {}), ("test_vit", 160, {"reg_tokens": 2})])
def test_forward_matches_timm(arch, size, kw):
    """The hand-finished last block, features and embedding equal timm's own forward paths."""
    model, _ = D.build_dino(arch, "random", size, seed=4, **kw)
    x = torch.randn(2, 3, size, size)
    npt = model.num_prefix_tokens
    assert npt == 1 + kw.get("reg_tokens", 0)
    out = D.forward_dino(model, x)
    with torch.no_grad():
        feats = model.forward_features(x)
        inter = model.forward_intermediates(x, indices=4, norm=True, return_prefix_tokens=True,
                                            intermediates_only=True)
    torch.testing.assert_close(out.embedding, feats[:, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.patch_mean, feats[:, npt:].mean(1), atol=1e-5, rtol=1e-5)
    assert out.cls_tokens.shape == (2, 4, model.embed_dim) and out.num_prefix_tokens == npt
    for i, (_, prefix) in enumerate(inter):
        torch.testing.assert_close(out.cls_tokens[:, i], prefix[:, 0], atol=1e-5, rtol=1e-5)
    # attention probabilities equal timm's unfused attention matrix row 0 of the last block
    captured = {}
    last = model.blocks[-1].attn
    last.fused_attn = False
    hook = last.attn_drop.register_forward_hook(lambda m, i, o: captured.setdefault("attn", o))
    with torch.no_grad():
        model.forward_features(x)
    hook.remove()
    torch.testing.assert_close(out.cls_logits.softmax(-1), captured["attn"][:, :, 0], atol=1e-6, rtol=1e-5)
