"""CLIP architectures (paper appendix A) as plain data, importable without torch.

| arch      | embed | vision layers/width/heads | text layers/width/heads | image/patch |
|-----------|-------|---------------------------|-------------------------|-------------|
| clip_s16  | 384   | 12 / 384 / 6              | 12 / 384 / 6            | 224 / 16    |
| clip_b16  | 512   | 12 / 768 / 12             | 12 / 512 / 8            | 224 / 16    |
| clip_l16  | 768   | 24 / 1024 / 16            | 12 / 768 / 12           | 224 / 16    |
| clip_tiny | 64    | 2 / 64 / 2                | 2 / 64 / 2              | 64 / 16     |  (tests)

The paper's base learning rate for all three is 5e-4 (AdamW, β = (0.9, 0.999), weight decay 0.05, cosine decay).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ClipArch:
    name: str
    embed_dim: int
    image_size: int
    patch_size: int
    vision_layers: int
    vision_width: int
    vision_heads: int
    text_layers: int
    text_width: int
    text_heads: int
    context_length: int = 77
    vocab_size: int = 49408
    mlp_ratio: float = 4.0

    def with_image_size(self, image_size: int | None) -> ClipArch:
        return self if image_size is None else ClipArch(**{**asdict(self), "image_size": int(image_size)})

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    def as_dict(self) -> dict:
        return asdict(self)


ARCHS: dict[str, ClipArch] = {
    "clip_tiny": ClipArch("clip_tiny", 64, 64, 16, 2, 64, 2, 2, 64, 2),
    "clip_s16": ClipArch("clip_s16", 384, 224, 16, 12, 384, 6, 12, 384, 6),
    "clip_b16": ClipArch("clip_b16", 512, 224, 16, 12, 768, 12, 12, 512, 8),
    "clip_l16": ClipArch("clip_l16", 768, 224, 16, 24, 1024, 16, 12, 768, 12),
}
ARCH_NAMES = tuple(ARCHS)
