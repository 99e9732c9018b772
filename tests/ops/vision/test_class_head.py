"""Class heads: DINO linear probe (official checkpoint layout) and CLIP zero-shot, checked against independent maths."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pyarrow as pa
import pytest

from djray import schema as S
from djray._compat import patch_torchvision
from djray.labels import read_labels
from djray.ops.vision.class_head import probabilities, top_classes
from djray.ops.vision.dino_patch import DinoPatchScorer
from djray.ops.vision.params import VisionParams

patch_torchvision()
torch = pytest.importorskip("torch")

LABELS = ["cat", "dog", "red car", "tree", "boat", "pizza", "guitar", "bridge", "horse", "lamp"]


def images(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 1, 1, 3))
    noise = rng.integers(-60, 60, (n, size, size, 3))
    return list(np.clip(base + noise, 0, 255).astype(np.uint8))


def batch_of(imgs: list[np.ndarray], size: int) -> pa.Table:
    rows = [dict(key=f"k{i}", src_shard="s.tar", src_index=i, _shard_order=0, caption_raw="c")
            for i in range(len(imgs))]
    t = pa.Table.from_pylist(rows, schema=S.SOURCE_SCHEMA)
    return t.append_column(S.PIXELS, pa.array([im.tobytes() for im in imgs], type=pa.binary(size * size * 3)))


def softmax64(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def timm_features(model, imgs, mean, std, protocol):
    """Linear-probe features through timm's own forward paths (independent of djray's forward), assembled as DINO's
    eval_linear.py does: ViT-S n_last_blocks=4 without avgpool, ViT-B n_last_blocks=1 with avgpool_patchtokens."""
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).double() / 255.0
    x = ((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)).float()
    n, avgpool = (4, False) if protocol == "cls4" else (1, True)
    with torch.no_grad():
        # DINO's get_intermediate_layers(x, n): the last n blocks' outputs, each through the final norm
        intermediate_output = model.forward_intermediates(x, indices=n, norm=True, output_fmt="NLC",
                                                          return_prefix_tokens=True, intermediates_only=True)
        intermediate_output = [torch.cat([prefix, tokens], dim=1) for tokens, prefix in intermediate_output]
        # ---- verbatim from dino/eval_linear.py (LinearClassifier input) ----
        output = torch.cat([x[:, 0] for x in intermediate_output], dim=-1)
        if avgpool:
            output = torch.cat((output.unsqueeze(-1), torch.mean(intermediate_output[-1][:, 1:], dim=1).unsqueeze(-1)),
                               dim=-1)
            output = output.reshape(output.shape[0], -1)
    return output.double().numpy()


@pytest.fixture
def labels_file(tmp_path):
    p = tmp_path / "labels.txt"
    p.write_text("\n".join(LABELS) + "\n\n")
    return str(p)


def save_linear(path, weight, bias):
    """DINO's eval_linear.py checkpoint: DDP-wrapped LinearClassifier under "state_dict", plus bookkeeping."""
    torch.save({"epoch": 100, "best_acc": 77.0,
                "state_dict": {"module.linear.weight": weight, "module.linear.bias": bias}}, path)


@pytest.mark.parametrize("protocol,prob", [("cls4", "softmax"), ("cls4", "sigmoid"), ("cls_avgpool", "softmax")])
def test_dino_linear_matches_numpy(tmp_path, labels_file, protocol, prob):
    d = 64  # test_vit
    in_dim = 4 * d if protocol == "cls4" else 2 * d
    g = torch.Generator().manual_seed(0)
    weight = 0.05 * torch.randn(len(LABELS), in_dim, generator=g)
    bias = torch.zeros(len(LABELS))
    if prob == "softmax":
        bias[3] = 12.0  # one dominant class: p("tree") ≈ 1 → the only evidence
    else:
        bias[[1, 4, 6]] = 8.0  # multi-label: three classes pass ε
        bias[[0, 2, 5, 7, 8, 9]] = -8.0
    path = tmp_path / "dino_linearweights.pth"
    save_linear(path, weight, bias)
    params = VisionParams(model="test_vit", weights="random", image_size=160, precision="fp32",
                          head={"kind": "dino_linear", "weights": f"file:{path}", "labels": labels_file,
                                "prob": prob, "top_k": 4, "threshold": 0.7})
    op = DinoPatchScorer(params)
    op.setup()
    assert op.head.features == protocol
    imgs = images(3, 160)
    out = op(batch_of(imgs, 160))
    feats = timm_features(op.model, imgs, op.backbone["mean"], op.backbone["std"], protocol)
    logits = feats @ weight.double().numpy().T + bias.double().numpy()
    expected = softmax64(logits) if prob == "softmax" else 1 / (1 + np.exp(-logits))
    for i in range(len(imgs)):
        classes = out[S.VIS_CLASSES][i].as_py()
        assert len(classes) == 4
        order = np.argsort(-expected[i], kind="stable")[:4]
        assert [c["label"] for c in classes] == [LABELS[j] for j in order]
        np.testing.assert_allclose([c["prob"] for c in classes], expected[i][order], rtol=1e-4, atol=1e-6)
        evidence = out[S.VIS_EVIDENCE][i].as_py()
        assert evidence == [LABELS[j] for j in np.argsort(-expected[i], kind="stable") if expected[i][j] > 0.7]
        if prob == "softmax":
            assert evidence == ["tree"]
        else:
            assert sorted(evidence) == ["boat", "dog", "guitar"]
    assert op.describe()["head"]["num_classes"] == len(LABELS)


def test_imagenet_labels_shipped_and_used_by_default():
    labels = read_labels(None)
    assert len(labels) == 1000
    assert labels[0] == "tench" and labels[1] == "goldfish" and labels[207] == "golden retriever"
    assert labels[281] == "tabby" and labels[999] == "toilet tissue"
    params = VisionParams(model="test_vit", weights="random", image_size=160,
                          head={"kind": "dino_linear", "weights": "random", "top_k": 3})
    op = DinoPatchScorer(params)
    op.setup()
    out = op(batch_of(images(1, 160), 160))
    classes = out[S.VIS_CLASSES][0].as_py()
    assert len(classes) == 3 and all(c["label"] in labels for c in classes)
    assert classes[0]["prob"] >= classes[1]["prob"] >= classes[2]["prob"]
    assert out[S.VIS_EVIDENCE][0].as_py() == []  # random head: nothing near ε


def test_softmax_evidence_semantics():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, (500, 20))
    p = probabilities(logits, "softmax")
    np.testing.assert_allclose(p.sum(1), 1.0)
    assert ((p > 0.5).sum(1) <= 1).all()  # softmax: at most one class above 0.5 (so ε=0.7 gives 0 or 1)
    labels = [f"c{i}" for i in range(20)]
    classes, evidence = top_classes(p, labels, top_k=3, threshold=0.7)
    for row, cls, ev in zip(p, classes, evidence):
        assert len(cls) == 3 and [c["prob"] for c in cls] == sorted((c["prob"] for c in cls), reverse=True)
        assert len(ev) <= 1 and ev == [labels[i] for i in np.flatnonzero(row > 0.7)]
    s = probabilities(np.array([[3.0, 3.0, -3.0, 0.8473]]), "sigmoid")
    assert top_classes(s, ["a", "b", "c", "d"], 2, 0.7)[1] == [["a", "b", "d"]]  # σ(0.8473) ≈ 0.70001 > ε
    assert top_classes(np.array([[0.7, 0.2, 0.1]]), ["a", "b", "c"], 5, 0.7) == ([[
        {"label": "a", "prob": 0.7}, {"label": "b", "prob": 0.2}, {"label": "c", "prob": 0.1}]], [[]])  # strict >


def test_linear_head_errors(tmp_path, labels_file):
    def setup_with(path, labels=labels_file):
        DinoPatchScorer(VisionParams(model="test_vit", weights="random", image_size=160, head={
            "kind": "dino_linear", "weights": f"file:{path}", "labels": labels})).setup()

    p = tmp_path / "w.pth"
    save_linear(p, torch.zeros(7, 256), torch.zeros(7))
    with pytest.raises(ValueError, match="7 classes but vision.head.labels has 10"):
        setup_with(p)
    save_linear(p, torch.zeros(10, 100), torch.zeros(10))
    with pytest.raises(ValueError, match="100-d features"):
        setup_with(p)
    torch.save({"state_dict": {"module.fc.w": torch.zeros(3)}}, p)
    with pytest.raises(ValueError, match="no linear head"):
        setup_with(p)
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable weights file"):
        setup_with(tmp_path / "bad.pth")


def test_validate_sources_names_keys(tmp_path):
    params = VisionParams(weights=f"file:{tmp_path / 'x.pth'}",
                          head={"kind": "clip_zeroshot", "weights": f"file:{tmp_path / 'c.pt'}",
                                "labels": str(tmp_path / "labels.txt")})
    with pytest.raises(ValueError) as e:
        params.validate_sources()
    msg = str(e.value)
    assert f"vision.weights: file not found: {tmp_path / 'x.pth'}" in msg
    assert "vision.head.weights: file not found" in msg and "vision.head.labels: file not found" in msg
    VisionParams(weights="random", head={"kind": "dino_linear", "weights": "random"}).validate_sources()


TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "patch_size": 32, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def test_clip_zeroshot(tmp_path, labels_file):
    import open_clip

    cfg_dir = tmp_path / "clip_cfg"
    cfg_dir.mkdir()
    (cfg_dir / "djray-tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(cfg_dir)
    torch.manual_seed(123)
    ref = open_clip.create_model("djray-tiny-clip", pretrained=None).eval()
    with torch.no_grad():  # a non-trivial logit geometry: spread the random text/image projections
        ref.text_projection.mul_(20.0)
        ref.visual.proj.mul_(20.0)
    weights = tmp_path / "clip.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, weights)
    templates = ("a photo of a {}.", "a drawing of the {}")
    params = VisionParams(model="test_vit", weights="random", image_size=224,
                          head={"kind": "clip_zeroshot", "clip_model": "djray-tiny-clip", "weights": f"file:{weights}",
                                "labels": labels_file, "templates": templates, "top_k": 10, "threshold": 0.3})
    op = DinoPatchScorer(params)
    op.setup()
    imgs = images(2, 224, seed=5)
    out = op(batch_of(imgs, 224))

    tok = open_clip.get_tokenizer("djray-tiny-clip")
    with torch.no_grad():
        text = []
        for label in LABELS:
            e = ref.encode_text(tok([t.format(label) for t in templates])).double().numpy()
            e = (e / np.linalg.norm(e, axis=1, keepdims=True)).mean(0)
            text.append(e / np.linalg.norm(e))
        text = np.stack(text)
        x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255.0
        mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
        std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
        img = ref.encode_image((x - mean) / std).double().numpy()
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    expected = softmax64(100.0 * img @ text.T)
    assert expected.max() > 0.3  # the test geometry gives some evidence
    for i in range(2):
        classes = out[S.VIS_CLASSES][i].as_py()
        got = dict((c["label"], c["prob"]) for c in classes)
        np.testing.assert_allclose([got[lab] for lab in LABELS], expected[i], rtol=1e-3, atol=1e-5)
        assert out[S.VIS_EVIDENCE][i].as_py() == [LABELS[j] for j in np.argsort(-expected[i], kind="stable")
                                                  if expected[i][j] > 0.3]
    assert op.describe()["head"]["clip_model"] == "djray-tiny-clip"


def test_clip_zeroshot_needs_labels():
    with pytest.raises(ValueError, match="labels is required"):
        VisionParams(head={"kind": "clip_zeroshot"})
