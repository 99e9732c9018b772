"""Class heads of the vision branch (paper Eq. 4, seed-algorithms.md §3.1–3.2): object classes as text evidence.

* ``none``          no classes (vis_classes / vis_evidence are empty lists for alive rows).
* ``dino_linear``   DINO's published linear probe on the backbone's features from the SAME forward pass:
                    [CLS] of the last 4 blocks through the final norm, concatenated (4·D, ViT-S protocol), or
                    [CLS] and mean patch token of the last block INTERLEAVED [cls0, avg0, cls1, avg1, …] (2·D, DINO's
                    ViT-B protocol, exactly as eval_linear.py builds it) — picked from the weight shape.
                    Checkpoint: ``{"state_dict": {"module.linear.weight", "module.linear.bias"}}`` or bare.
                    Labels: ImageNet-1k (first WordNet lemma per synset, ``djray/data/imagenet1k_labels.txt``, read by djray.labels).
* ``clip_zeroshot`` an open_clip image tower on the canonical crop (CLIP mean/std, resized to the tower's input size
                    if it differs); text embeddings of label × templates averaged per label once in setup;
                    logits = 100 · cos.

Probabilities: softmax (default; at most one class can exceed 0.5, so ε = 0.7 yields 0 or 1 class) or sigmoid.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from djray._compat import patch_torchvision
from djray.labels import read_labels
from djray.models import weights as W
from djray.ops.vision.params import HeadParams

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_LOGIT_SCALE = 100.0


def probabilities(logits: np.ndarray, mode: str) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    if mode == "softmax":
        z = z - z.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)
    if mode == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    raise ValueError(f"unknown prob mode {mode!r}")


def top_classes(probs: np.ndarray, labels: list[str], top_k: int, threshold: float):
    """Per row: the top_k (label, prob) by prob descending (ties: lower class index) and the labels with p > ε."""
    classes, evidence = [], []
    for p in np.asarray(probs):
        order = np.argsort(-p, kind="stable")
        classes.append([{"label": labels[i], "prob": float(p[i])} for i in order[:top_k]])
        evidence.append([labels[i] for i in order if p[i] > threshold])
    return classes, evidence


class ClassHead:
    """Interface: `setup(backbone_desc, device)`, `logits(pixels_uint8, dino_outputs) -> (B, L) float32 tensor`."""

    kind = "none"

    def __init__(self, params: HeadParams, seed: int = 0, cache_dir: str | None = None):
        self.params = params
        self.seed = seed
        self.cache_dir = cache_dir
        self.labels: list[str] = []
        self.description: dict[str, Any] = {"kind": self.kind}

    def setup(self, backbone: dict[str, Any], embed_dim: int, device: str, precision: str = "fp32") -> None:
        pass

    def logits(self, pixels, dino):  # pragma: no cover - NoHead is never asked
        raise NotImplementedError

    def _fetch(self) -> str:
        path = W.fetch(self.params.weights, self.cache_dir)
        self.description["file_sha256"] = W.sha256_file(path)
        return path


class NoHead(ClassHead):
    kind = "none"


class DinoLinearHead(ClassHead):
    kind = "dino_linear"

    def setup(self, backbone: dict[str, Any], embed_dim: int, device: str, precision: str = "fp32") -> None:
        import torch

        self.labels = read_labels(self.params.labels)
        src = W.parse_source(self.params.weights)
        shown = f"vision.head.weights ({src})"
        if src.kind == "random":
            g = torch.Generator().manual_seed(self.seed)
            weight = torch.randn(len(self.labels), 4 * embed_dim, generator=g) * 0.01
            bias = torch.zeros(len(self.labels))
        else:
            path = self._fetch_hub(backbone["model"]) if src.kind == "hub" else self._fetch()
            weight, bias = parse_linear_state(W.load_state_dict(path), shown)
        out_dim, in_dim = weight.shape
        if in_dim == 4 * embed_dim:
            self.features = "cls4"
        elif in_dim == 2 * embed_dim:
            self.features = "cls_avgpool"
        else:
            raise ValueError(f"{shown}: linear head takes {in_dim}-d features; backbone with D={embed_dim} gives "
                             f"4·D={4 * embed_dim} (last-4 [CLS]) or 2·D={2 * embed_dim} ([CLS]+avgpool)")
        if out_dim != len(self.labels):
            raise ValueError(f"{shown}: linear head has {out_dim} classes but vision.head.labels has "
                             f"{len(self.labels)} labels")
        self.weight = weight.float().to(device)
        self.bias = bias.float().to(device)
        self.description.update(features=self.features, in_dim=int(in_dim), num_classes=int(out_dim),
                                weights=str(src), state_sha256=W.state_sha256({"weight": weight, "bias": bias}))

    def _fetch_hub(self, model_name: str) -> str:
        import torch

        from djray.models.dino import DINO_LINEAR_URLS

        arch = model_name.split(".")[0]
        url = DINO_LINEAR_URLS.get(arch)
        if url is None:
            raise ValueError(f"vision.head.weights: no published DINO linear head for {model_name!r}; "
                             "use file:PATH or s3://")
        path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
        if not os.path.isfile(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                torch.hub.download_url_to_file(url, path, progress=False)
            except Exception as e:  # noqa: BLE001
                raise RuntimeError(f"vision.head.weights: download of {url} failed ({e}); offline machines need "
                                   "file:PATH or s3://") from e
        self.description["url"] = url
        self.description["file_sha256"] = W.sha256_file(path)
        return path

    def features_of(self, dino):
        import torch

        if self.features == "cls4":
            if dino.cls_tokens.shape[1] != 4:
                raise ValueError("dino_linear head needs a backbone with at least 4 blocks")
            return dino.cls_tokens.reshape(dino.cls_tokens.shape[0], -1)
        # DINO eval_linear.py (avgpool_patchtokens): cat((cls.unsqueeze(-1), avg.unsqueeze(-1)), -1).reshape(B, -1)
        # interleaves the two vectors [cls0, avg0, cls1, avg1, …]; the published ViT-B heads expect that layout.
        cls = dino.cls_tokens[:, -1]
        return torch.stack([cls, dino.patch_mean], dim=-1).reshape(cls.shape[0], -1)

    def logits(self, pixels, dino):
        import torch.nn.functional as F

        return F.linear(self.features_of(dino).float(), self.weight, self.bias)


def parse_linear_state(ckpt: dict[str, Any], shown: str):
    """(weight, bias) from DINO's linear-eval checkpoint (``state_dict`` / ``module.linear.*``) or a bare Linear."""
    import torch

    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt.get("state_dict"), dict) else ckpt
    sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()
          if isinstance(v, torch.Tensor)}
    for prefix in ("linear.", "", "head.", "fc."):
        w, b = sd.get(prefix + "weight"), sd.get(prefix + "bias")
        if w is not None and b is not None:
            if w.ndim != 2 or b.ndim != 1 or b.shape[0] != w.shape[0]:
                raise ValueError(f"{shown}: bad linear head shapes weight {tuple(w.shape)}, bias {tuple(b.shape)}")
            return w, b
    raise ValueError(f"{shown}: no linear head in checkpoint (expected module.linear.weight/bias, found "
                     f"{', '.join(sorted(sd)[:6]) or 'no tensors'})")


class ClipZeroShotHead(ClassHead):
    kind = "clip_zeroshot"

    def setup(self, backbone: dict[str, Any], embed_dim: int, device: str, precision: str = "fp32") -> None:
        import torch
        import torch.nn.functional as F

        patch_torchvision()
        import open_clip

        from djray.models.clip import build_clip

        self.labels = read_labels(self.params.labels)
        self.device, self.precision = device, precision
        src = W.parse_source(self.params.weights)
        name = self.params.clip_model
        model, built = build_clip(name, self.params.weights, seed=self.seed, device=device, cache_dir=self.cache_dir,
                                  key="vision.head.weights")
        for k in ("pretrained", "file_sha256"):
            if k in built:
                self.description[k] = built[k]
        tokenizer = open_clip.get_tokenizer(name)
        with torch.inference_mode():
            per_label = []
            for label in self.labels:
                tokens = tokenizer([t.replace("{}", label) for t in self.params.templates]).to(device)
                t = F.normalize(model.encode_text(tokens).float(), dim=-1).mean(dim=0)
                per_label.append(F.normalize(t, dim=-1))
            self.text = torch.stack(per_label)  # (L, E)
        cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
        self.mean = torch.tensor(cfg.get("mean", CLIP_MEAN), device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", CLIP_STD), device=device).view(1, 3, 1, 1)
        size = model.visual.image_size
        self.size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        self.visual = model.visual  # the text tower is no longer needed
        self.description.update(clip_model=name, weights=str(src), num_classes=len(self.labels),
                                templates=list(self.params.templates), image_size=list(self.size),
                                state_sha256=built["state_sha256"])

    def logits(self, pixels, dino):
        import torch
        import torch.nn.functional as F

        from djray.models.dino import autocast

        x = pixels.permute(0, 3, 1, 2).float().div_(255.0)
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bicubic", antialias=True, align_corners=False).clamp_(0, 1)
        x = (x - self.mean) / self.std
        with torch.inference_mode(), autocast(x.device.type, self.precision):
            img = self.visual(x)
        img = F.normalize(img.float(), dim=-1)
        return CLIP_LOGIT_SCALE * img @ self.text.T


HEADS = {"none": NoHead, "dino_linear": DinoLinearHead, "clip_zeroshot": ClipZeroShotHead}


def build_head(params: HeadParams, seed: int = 0, cache_dir: str | None = None) -> ClassHead:
    return HEADS[params.kind](params, seed=seed, cache_dir=cache_dir)
