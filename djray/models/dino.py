"""DINO ViT backbone (timm): build it, load its weights from any source, and run the one forward the vision op needs.

`build_dino()` creates the timm ViT with ``img_size=image_size`` (position embeddings resampled once at load, bicubic
with antialias, exactly as timm does for its own pretrained weights) and ``num_classes=0``, then loads weights from
``hub`` (timm ``pretrained=True``), ``random`` (seeded), or a ``file:``/``s3://`` checkpoint that is either a timm state
dict or DINO's official layout (``teacher``/``student`` dicts, ``module.``/``backbone.`` prefixes).

`forward_dino()` implements seed-algorithms.md §2.4: blocks[:-1] as usual; in the last block the [CLS] query against
all keys is computed by hand from ``norm1`` output with the qkv bias, in fp32 whatever the autocast precision, and the
same ``norm1`` output then finishes the block so the class-head features come from the same forward pass.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from djray._compat import patch_torchvision
from djray.models import weights as W

N_LAST_BLOCKS = 4  # DINO linear eval on ViT-S: [CLS] of the last 4 blocks, each through the final norm

# DINO's published linear heads (eval_linear.py / README), for `head.weights: hub`.
DINO_LINEAR_URLS = {
    "vit_small_patch16_224": "https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/"
    "dino_deitsmall16_linearweights.pth",
    "vit_small_patch8_224": "https://dl.fbaipublicfiles.com/dino/dino_deitsmall8_pretrain/"
    "dino_deitsmall8_linearweights.pth",
    "vit_base_patch16_224": "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/"
    "dino_vitbase16_linearweights.pth",
    "vit_base_patch8_224": "https://dl.fbaipublicfiles.com/dino/dino_vitbase8_pretrain/"
    "dino_vitbase8_linearweights.pth",
}


@dataclass
class DinoOutputs:
    cls_logits: Any  # (B, heads, N) fp32: scale·q_cls·kᵀ over ALL N tokens (prefix tokens included), pre-softmax
    cls_tokens: Any  # (B, n_last, D) fp32: [CLS] of the last n blocks, each through the final norm (block order)
    patch_mean: Any  # (B, D) fp32: mean of the final-normed patch tokens of the last block (DINO ViT-B linear eval)
    num_prefix_tokens: int

    @property
    def embedding(self):  # final-norm [CLS] of the last block
        return self.cls_tokens[:, -1]


def _import_timm():
    patch_torchvision()
    import timm

    return timm


def check_supported(model) -> None:
    """The score recipe needs a class token and a standard pre-norm timm Block/Attention as the last block."""
    from timm.layers import Attention
    from timm.models.vision_transformer import Block, VisionTransformer

    name = type(model).__name__
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"vision.model: {name} is not a timm VisionTransformer")
    if getattr(model, "cls_token", None) is None:
        raise ValueError("vision.model: the model has no [CLS] token; CLS→patch scores are undefined")
    last = model.blocks[-1]
    if type(last) is not Block or not isinstance(last.attn, Attention):
        raise ValueError(f"vision.model: last block {type(last).__name__}/{type(last.attn).__name__} is not a "
                         "standard timm Block with Attention (qkv); the CLS-attention recipe does not apply")
    if getattr(model, "attn_pool", None) is not None:
        raise ValueError("vision.model: attention-pooled ViTs are not supported")


def geometry(model) -> dict[str, int]:
    ph, pw = model.patch_embed.patch_size
    gh, gw = model.patch_embed.grid_size
    if ph != pw:
        raise ValueError(f"vision.model: non-square patches {ph}x{pw} are not supported")
    return {"patch_size": int(ph), "grid_h": int(gh), "grid_w": int(gw)}


def extract_backbone_state(ckpt: dict[str, Any]) -> dict[str, Any]:
    """Reduce a checkpoint to a flat backbone state dict with timm key names.

    Accepts a plain timm/DINO state dict, ``{"model"|"state_dict": ...}``, and DINO's training checkpoint
    ``{"teacher": {"backbone.*", "head.*"}, "student": {"module.backbone.*", ...}, ...}`` (teacher preferred, as in
    DINO's ``eval_linear.py``). DINO's backbone keys (cls_token, pos_embed, patch_embed.proj, blocks.i.{norm1,attn.qkv,
    attn.proj,norm2,mlp.fc1,mlp.fc2}, norm) already equal timm's once the prefixes are gone.
    """
    import torch

    sd: Any = ckpt
    for key in ("teacher", "student", "model", "state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise ValueError("no tensors found in checkpoint")
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    if any(k.startswith("backbone.") for k in sd):  # DINO wrapper: backbone.* + head.* (the DINO projection head)
        sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    return sd


def load_backbone(model, ckpt: dict[str, Any], shown: str) -> None:
    """Load a checkpoint into `model` strictly (after prefix stripping, timm's filter and pos-embed resampling)."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    try:
        sd = extract_backbone_state(ckpt)
        sd = checkpoint_filter_fn(sd, model)
    except ValueError as e:
        raise ValueError(f"{shown}: {e}") from e
    except Exception as e:  # noqa: BLE001 - timm's converters raise assorted errors on foreign layouts
        raise ValueError(f"{shown}: not a ViT checkpoint for this model ({type(e).__name__}: {e})") from e
    if not any(p.numel() for n, p in model.named_parameters() if n.startswith("head.")):
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}  # classifier of a supervised checkpoint
    expected = model.state_dict()
    bad = [f"{k} {tuple(v.shape)} vs model {tuple(expected[k].shape)}" for k, v in sd.items()
           if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if bad or missing or unexpected:
        parts = []
        if bad:
            parts.append(f"shape mismatch: {', '.join(bad[:5])}")
        if missing:
            parts.append(f"missing keys: {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected[:5])}{' …' if len(unexpected) > 5 else ''}")
        raise ValueError(f"{shown}: weights do not fit model {getattr(model, 'default_cfg', {}).get('architecture')}"
                         f" ({'; '.join(parts)})")
    model.load_state_dict(sd, strict=True)


def build_dino(name: str, weights: str, image_size: int, seed: int = 0, device: str = "cpu",
               cache_dir: str | None = None, **timm_kwargs: Any):
    """Create the scorer backbone and load its weights. Returns ``(model, description)`` (model in eval mode).

    `description` goes into the manifest: model name, weight source, file sha256 (file/s3), a checksum of the loaded
    parameters (all sources), geometry, prefix-token count and the normalisation mean/std.
    """
    import torch

    timm = _import_timm()
    src = W.parse_source(weights)
    kwargs = dict(img_size=image_size, num_classes=0, **timm_kwargs)
    desc: dict[str, Any] = {"model": name, "weights": str(src), "image_size": image_size}
    if src.kind == "hub":
        if src.location:
            raise ValueError("vision.weights: put the pretrained tag in vision.model (e.g. vit_small_patch16_224.dino),"
                             " not in hub:TAG")
        try:
            model = timm.create_model(name, pretrained=True, **kwargs)
        except Exception as e:  # noqa: BLE001 - network / hub errors
            raise RuntimeError(f"vision.weights: hub download of {name!r} failed ({type(e).__name__}: {e}); "
                               "offline machines need weights: file:PATH or s3://bucket/key") from e
    else:
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = timm.create_model(name, pretrained=False, **kwargs)
        except RuntimeError as e:
            if "Unknown model" in str(e):
                raise ValueError(f"vision.model: unknown timm model {name!r}") from e
            raise
        if src.kind in ("file", "s3"):
            path = W.fetch(src, cache_dir)
            desc["file_sha256"] = W.sha256_file(path)
            load_backbone(model, W.load_state_dict(path), f"vision.weights ({src})")
        else:
            desc["seed"] = seed
    check_supported(model)
    model.eval().requires_grad_(False)
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    desc.update(geometry(model))
    desc.update(
        num_prefix_tokens=int(model.num_prefix_tokens),
        mean=list(cfg.get("mean", (0.485, 0.456, 0.406))),
        std=list(cfg.get("std", (0.229, 0.224, 0.225))),
        state_sha256=W.state_sha256(model.state_dict()),
    )
    if src.kind == "hub":
        desc["hub_id"] = cfg.get("hf_hub_id") or cfg.get("url")
    return model.to(device), desc


def autocast(device_type: str, precision: str):
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type=device_type, dtype=dtype)


def forward_dino(model, x, precision: str = "fp32", n_last_blocks: int = N_LAST_BLOCKS) -> DinoOutputs:
    """One forward pass → CLS→token logits of the last block + class-head features. `x`: normalised (B, 3, S, S)."""
    import torch
    import torch.nn.functional as F

    device_type = x.device.type
    blocks = list(model.blocks)
    depth = len(blocks)
    first_kept = depth - min(n_last_blocks, depth)
    cls_tokens = []
    with torch.inference_mode():
        with autocast(device_type, precision):
            h = model.patch_embed(x)
            h = model._pos_embed(h)
            h = model.patch_drop(h)
            h = model.norm_pre(h)
            for i, blk in enumerate(blocks[:-1]):
                h = blk(h)
                if i >= first_kept:
                    cls_tokens.append(model.norm(h[:, 0]).float())
            last = blocks[-1]
            attn = last.attn
        # scores: fp32 LayerNorm, q/k projections and softmax logits, whatever the autocast precision
        with torch.autocast(device_type=device_type, enabled=False):
            y = last.norm1(h.float())
            heads, hd = attn.num_heads, attn.head_dim
            dim = heads * hd
            w, b = attn.qkv.weight.float(), attn.qkv.bias
            bq = b[:dim].float() if b is not None else None
            bk = b[dim:2 * dim].float() if b is not None else None
            q = F.linear(y[:, :1], w[:dim], bq).reshape(y.shape[0], 1, heads, hd)
            k = F.linear(y, w[dim:2 * dim], bk).reshape(y.shape[0], y.shape[1], heads, hd)
            q, k = attn.q_norm(q), attn.k_norm(k)
            logits = torch.einsum("bhd,bnhd->bhn", q[:, 0].float(), k.float()) * float(attn.scale)
        # finish the last block from the same norm1 output (timm Block.forward, minus the recomputed norm1)
        with autocast(device_type, precision):
            h = h + last.drop_path1(last.ls1(attn(y)))
            h = h + last.drop_path2(last.ls2(last.mlp(last.norm2(h))))
            out = model.norm(h).float()
    cls_tokens.append(out[:, 0])
    npt = int(model.num_prefix_tokens)
    return DinoOutputs(
        cls_logits=logits,
        cls_tokens=torch.stack(cls_tokens, dim=1),
        patch_mean=out[:, npt:].mean(dim=1),
        num_prefix_tokens=npt,
    )
