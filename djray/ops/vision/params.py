"""Parameters of the vision branch (config section ``vision``). Names are fixed by the product spec."""

from __future__ import annotations

import os
import re
from typing import ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from djray.models import weights as W
from djray.labels import check_templates
from djray.ops.base import RUNTIME, Params, ResourcesParams

AGGREGATION_RE = re.compile(r"^(mean_prob|mean_logit|max_prob|head:\d+)$")
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "a close-up photo of a {}.",
)
MAX_PATCHES = 32767  # patch_idx is int16


def _check_source_syntax(v: str) -> str:
    W.parse_source(v)
    return v.strip()


def patch_size_from_name(model: str) -> int | None:
    """The patch size encoded in a timm model name (``vit_small_patch16_224.dino`` → 16), or None."""
    m = re.search(r"patch(\d+)", model)
    return int(m.group(1)) if m else None


class HeadParams(Params):
    kind: Literal["none", "dino_linear", "clip_zeroshot"] = "none"
    weights: str = "hub"  # same syntax as vision.weights; hub:TAG picks an open_clip pretrained tag
    labels: str | None = None  # one label per line; null → ImageNet-1k (dino_linear only)
    threshold: float = Field(0.7, ge=0.0, le=1.0)  # ε: classes with p > ε become evidence
    top_k: int = Field(5, ge=1)
    prob: Literal["softmax", "sigmoid"] = "softmax"
    clip_model: str = "ViT-B-16"  # open_clip model name (clip_zeroshot)
    templates: tuple[str, ...] = DEFAULT_TEMPLATES  # prompt templates with one "{}" (clip_zeroshot)

    @field_validator("weights")
    @classmethod
    def _weights_syntax(cls, v: str) -> str:
        return _check_source_syntax(v)

    @field_validator("templates")
    @classmethod
    def _templates(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return check_templates(v)

    @model_validator(mode="after")
    def _labels_needed(self) -> HeadParams:
        if self.kind == "clip_zeroshot" and not self.labels:
            raise ValueError("head.labels is required for clip_zeroshot (a file with one label per line)")
        return self


class VisionParams(Params):
    # Patch selection: chosen in phase C from the stored scores, so these are selection parameters (another ratio
    # re-selects without a model); every other key shapes the signals.
    SELECTION_FIELDS: ClassVar[tuple[str, ...]] = ("ratio", "strategy", "seed", "strata", "mix_alpha")

    model: str = "vit_small_patch16_224.dino"
    weights: str = "hub"
    image_size: int = Field(224, ge=16)
    aggregation: str = "mean_prob"
    strategy: Literal["topk", "uniform", "stratified", "mix"] = "topk"
    ratio: float = Field(0.5, gt=0.0, le=1.0)
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: djray.models.precision
    batch_size: int = Field(64, ge=1, json_schema_extra=RUNTIME)
    resources: ResourcesParams = Field(ResourcesParams(), json_schema_extra=RUNTIME)  # null keys: no GPU → one
    # actor per core, one torch thread each, one CPU kept for the read/decode tasks; GPUs → one actor per GPU
    head: HeadParams = HeadParams()
    strata: int = Field(4, ge=1)  # stratified: number of equal-count score strata
    mix_alpha: float = Field(0.5, ge=0.0, le=1.0)  # mix: fraction of k taken from the top scores

    @field_validator("aggregation")
    @classmethod
    def _aggregation(cls, v: str) -> str:
        if not AGGREGATION_RE.match(v):
            raise ValueError(f"aggregation {v!r} must be mean_prob, mean_logit, max_prob or head:I")
        return v

    # Field validators (not a model validator) so errors name the key: vision.weights, vision.image_size.
    @field_validator("weights")
    @classmethod
    def _backbone_weights(cls, v: str) -> str:
        v = _check_source_syntax(v)
        if v.startswith("hub:"):
            raise ValueError("hub:TAG is for open_clip heads; put the backbone's pretrained tag in "
                             "vision.model (e.g. vit_small_patch16_224.dino) and use weights: hub")
        return v

    @field_validator("image_size")
    @classmethod
    def _geometry(cls, v: int, info: ValidationInfo) -> int:
        model = info.data.get("model")
        p = patch_size_from_name(model) if model else None
        if p is not None:
            if v % p:
                raise ValueError(f"image_size {v} is not a multiple of the patch size {p} of {model} "
                                 f"(try {max(p, round(v / p) * p)})")
            if (v // p) ** 2 > MAX_PATCHES:
                raise ValueError(f"image_size {v} gives more than {MAX_PATCHES} patches")
        return v

    def validate_sources(self, prefix: str = "vision") -> None:
        """Check every weights source and labels file before any data is read (``djray validate``).

        Raises ValueError listing each problem with its config key, e.g. ``vision.weights: file not found: /x.pth``.
        """
        problems = []
        try:
            W.check_source(self.weights)
        except ValueError as e:
            problems.append(f"{prefix}.weights: {e}")
        if self.head.kind != "none":
            try:
                W.check_source(self.head.weights)
            except ValueError as e:
                problems.append(f"{prefix}.head.weights: {e}")
            if self.head.labels is not None:
                path = os.path.expanduser(self.head.labels)
                if not os.path.isfile(path):
                    problems.append(f"{prefix}.head.labels: file not found: {path}")
                elif not os.access(path, os.R_OK):
                    problems.append(f"{prefix}.head.labels: file not readable: {path}")
        if problems:
            raise ValueError("\n".join(problems))
