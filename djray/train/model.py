"""CLIP with a vision tower that trains on kept patches only (Eq. 7–8) and runs on full images at inference.

Built from open_clip building blocks (`Transformer` residual attention blocks, `TextTransformer`, `LayerNorm`) so the
layers are open_clip's; the vision forward is ours because it takes per-sample patch indices:

    patches (B, N, 3·p·p) ─ gather kept ─► patch embedding + their own position embeddings ─► [CLS] + kept tokens
    ─► ln_pre ─► transformer ─► ln_post([CLS]) @ proj

The patch embedding is a per-patch linear map (open_clip's stride-p conv), so embedding then gathering equals
gathering then embedding; gathering first skips the dropped patches' work. k is fixed per batch: dense tensors, no
attention masks. `keep_idx=None` runs every patch (eval, `patches.mode: full`, the final full-patch tuning steps).
The text tower accepts token batches trimmed to the batch's longest caption (exact with the causal mask).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from djray._compat import patch_torchvision
from djray.train.archs import ClipArch
from djray.train.loss import itc_loss, siglip_loss

patch_torchvision()
from open_clip.transformer import LayerNorm, TextTransformer, Transformer  # noqa: E402

# CLIP's pixel statistics (open_clip OPENAI_DATASET_MEAN / _STD)
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


class PatchViT(nn.Module):
    def __init__(self, image_size: int, patch_size: int, width: int, layers: int, heads: int, output_dim: int,
                 mlp_ratio: float = 4.0):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.image_size, self.patch_size = image_size, patch_size
        self.grid = image_size // patch_size
        self.num_patches = self.grid * self.grid
        scale = width ** -0.5
        # Same parameters as open_clip's conv1 (width, 3, p, p), flattened: a patch is (channel, row, col)-ordered.
        self.patch_embed = nn.Linear(3 * patch_size * patch_size, width, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(self.num_patches + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, mlp_ratio=mlp_ratio)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))
        self.heads = heads

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) → (B, N, 3·p·p), patches in raster order (row-major over the grid)."""
        b, c, h, w = x.shape
        p, g = self.patch_size, self.grid
        if h != self.image_size or w != self.image_size:
            raise ValueError(f"expected {self.image_size}×{self.image_size} images, got {h}×{w}")
        x = x.reshape(b, c, g, p, g, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, g * g, c * p * p)

    def tokens(self, x: torch.Tensor, keep_idx: torch.Tensor | None = None) -> torch.Tensor:
        """[CLS] + (kept) patch tokens with their position embeddings, before ln_pre: (B, 1 + k, width)."""
        patches = self.patchify(x)
        pos = self.positional_embedding[1:].to(patches.dtype)
        if keep_idx is not None:
            keep_idx = keep_idx.to(device=patches.device, dtype=torch.long)
            patches = torch.gather(patches, 1, keep_idx.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
            pos = pos[keep_idx]  # (B, k, width)
        tok = self.patch_embed(patches) + pos
        cls = (self.class_embedding + self.positional_embedding[0]).to(tok.dtype)
        return torch.cat([cls.expand(tok.shape[0], 1, -1), tok], dim=1)

    def forward(self, x: torch.Tensor, keep_idx: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        t = self.ln_pre(self.tokens(x, keep_idx))
        t = self.transformer(t, attn_mask=attn_mask)
        return self.ln_post(t[:, 0]) @ self.proj.to(t.dtype)


class TrimmableTextTransformer(TextTransformer):
    """open_clip's text tower; also accepts sequences shorter than context_length (the causal mask is sliced)."""

    def _embeds(self, text):
        x, mask = super()._embeds(text)
        n = text.shape[1]
        if mask is not None and mask.shape[-1] != n:
            mask = mask[..., :n, :n]
        return x, mask


class CLIP(nn.Module):
    def __init__(self, arch: ClipArch, loss: str = "itc"):
        super().__init__()
        self.arch = arch
        self.visual = PatchViT(arch.image_size, arch.patch_size, arch.vision_width, arch.vision_layers,
                               arch.vision_heads, arch.embed_dim, arch.mlp_ratio)
        self.text = TrimmableTextTransformer(context_length=arch.context_length, vocab_size=arch.vocab_size,
                                             width=arch.text_width, heads=arch.text_heads, layers=arch.text_layers,
                                             mlp_ratio=arch.mlp_ratio, output_dim=arch.embed_dim)
        # CLIP: learnable temperature, init 1/0.07; SigLIP: t' = log 10, bias -10 (Zhai et al. 2023).
        init_scale = math.log(10.0) if loss == "siglip" else math.log(1 / 0.07)
        # Shape (1,), not a 0-d scalar: DeepSpeed's parameter broadcast views every parameter as bytes.
        self.logit_scale = nn.Parameter(torch.full((1,), init_scale))
        self.logit_bias = nn.Parameter(torch.full((1,), -10.0)) if loss == "siglip" else None
        self.register_buffer("pixel_mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (B, S, S, 3) canonical crops → normalised float (B, 3, S, S) in the model's dtype."""
        x = pixels.permute(0, 3, 1, 2).float().div_(255.0)
        x = (x - self.pixel_mean) / self.pixel_std
        return x.to(self.visual.proj.dtype)

    def encode_image(self, pixels: torch.Tensor, keep_idx: torch.Tensor | None = None,
                     normalize: bool = True) -> torch.Tensor:
        x = self.visual(self.preprocess(pixels) if pixels.dtype == torch.uint8 else pixels, keep_idx)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        x = self.text(tokens)
        return F.normalize(x, dim=-1) if normalize else x

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=math.log(100.0)).exp()

    def forward(self, pixels: torch.Tensor, tokens: torch.Tensor, keep_idx: torch.Tensor | None = None,
                loss: str = "itc") -> torch.Tensor:
        """The training objective on one (micro) batch. Computed inside forward so that DeepSpeed ZeRO-3 gathers
        every parameter it touches (the temperature included). Features are gathered across workers (global
        negatives) when a process group with more than one rank is up."""
        img = self.encode_image(pixels, keep_idx)
        txt = self.encode_text(tokens)
        if loss == "siglip":
            return siglip_loss(img, txt, self.scale(), self.logit_bias)
        return itc_loss(img, txt, self.scale())


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay for gains, biases, embeddings' 1-d parameters and the temperature (open_clip's rule)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or name.endswith("bias") or "logit_" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_model(arch: ClipArch, loss: str = "itc", seed: int = 0) -> CLIP:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIP(arch, loss)


def key_mask(keep_idx: torch.Tensor, num_patches: int, heads: int) -> torch.Tensor:
    """The additive attention mask equivalent to gathering: -inf on the keys of dropped patches, for every query.
    Shape (B·heads, 1 + N, 1 + N) as nn.MultiheadAttention takes it. For tests and for checking the gather."""
    b = keep_idx.shape[0]
    keep = torch.zeros(b, 1 + num_patches, dtype=torch.bool, device=keep_idx.device)
    keep[:, 0] = True
    keep.scatter_(1, keep_idx.long() + 1, True)
    mask = torch.zeros(b, 1 + num_patches, dtype=torch.float32, device=keep_idx.device)
    mask.masked_fill_(~keep, float("-inf"))
    mask = mask[:, None, None, :].expand(b, heads, 1 + num_patches, 1 + num_patches)
    return mask.reshape(b * heads, 1 + num_patches, 1 + num_patches)
