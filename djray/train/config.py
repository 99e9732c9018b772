"""Training configuration (`djray train CONFIG`, `djray eval CONFIG`): YAML → strict typed models.

Unknown keys are errors that name the key, like the governance config (`djray.config`). The free-form
`deepspeed.config` mapping is the one exception: it is merged into the DeepSpeed config as given.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from djray.config import ConfigError, NonEmptyStr, Section, StorageConfig, read_yaml, validate_config
from djray.labels import check_templates
from djray.train.archs import ARCHS, ClipArch

# DeepSpeed keys djray derives itself; setting them in deepspeed.config would silently disagree with train.*.
_DERIVED_DS_KEYS = {
    "train_batch_size": "train.batch_size",
    "train_micro_batch_size_per_gpu": "train.batch_size (divided by workers × gradient_accumulation_steps)",
    "optimizer": "train.lr / train.weight_decay (djray passes a torch AdamW)",
    "scheduler": "train.warmup (djray passes a warmup + cosine schedule)",
    "fp16": "train.precision",
    "bf16": "train.precision",
}
DEFAULT_TEMPLATES = ("a photo of a {}.",)
RESCORE_ONLY = frozenset({"ratio", "strategy", "strata", "mix_alpha"})  # patches.* keys only `rescore` reads


class DataConfig(Section):
    path: NonEmptyStr = Field(description="governed output directory (its data/ is read), local or s3://")
    hflip: float = Field(0.0, ge=0.0, le=1.0, description="probability of a horizontal flip (indices are mirrored)")
    shuffle: bool = True
    seed: int = 0
    sampler: Literal["none", "infogrowth_static", "infogrowth_dynamic"] = Field(
        "none", description="draw rows by the `gain` an infogrowth sieve published (djray.train.sampler)")
    num_workers: int = Field(4, ge=0, description="decode threads per training worker (0: decode inline)")
    prefetch: int = Field(2, ge=1, description="batches decoded ahead of the training step")


class ModelConfig(Section):
    arch: Literal["clip_tiny", "clip_s16", "clip_b16", "clip_l16"] = "clip_s16"
    image_size: int | None = Field(None, ge=16, description="default: the arch's (224; clip_tiny 64)")

    def resolved(self) -> ClipArch:
        arch = ARCHS[self.arch].with_image_size(self.image_size)
        if arch.image_size % arch.patch_size:
            raise ConfigError(f"model.image_size: {arch.image_size} is not a multiple of the patch size "
                              f"{arch.patch_size}")
        return arch


class PatchesConfig(Section):
    mode: Literal["kept", "rescore", "full"] = "kept"
    ratio: float = Field(0.5, gt=0.0, le=1.0, description="rescore: keep k = max(1, round(r·m)) of m patches")
    strategy: Literal["topk", "uniform", "stratified", "mix"] = "topk"
    seed: int = 0
    strata: int = Field(4, ge=1)
    mix_alpha: float = Field(0.5, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _selection_keys_need_rescore(self) -> PatchesConfig:
        """kept / full never select patches here: a ratio etc. set with them would do nothing, silently."""
        ignored = sorted(RESCORE_ONLY & self.model_fields_set)
        if self.mode != "rescore" and ignored:
            raise ValueError(f"patches.{', patches.'.join(ignored)} only apply to patches.mode: rescore; with "
                             f"mode {self.mode} the patches are "
                             + ("those stored in patch_idx (k chosen at governance time, vision.ratio)"
                                if self.mode == "kept" else "all of them") + ": remove the key(s)")
        return self


class TrainSection(Section):
    batch_size: int = Field(256, ge=1, description="global batch (all workers)")
    steps: int | None = Field(None, ge=1)
    epochs: float | None = Field(None, gt=0)
    lr: float = Field(5e-4, gt=0)
    min_lr: float = Field(0.0, ge=0)
    weight_decay: float = Field(0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    warmup: int = Field(0, ge=0, description="linear warmup steps, then cosine decay to min_lr")
    full_patch_tuning: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of final steps on all patches")
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    grad_clip: float | None = Field(None, gt=0)
    seed: int = 0
    log_every: int = Field(1, ge=1)
    checkpoint_every: int = Field(0, ge=0, description="steps between checkpoints; 0: only at the end")
    keep_checkpoints: int = Field(2, ge=1)
    resume: bool = Field(True, description="continue from output.path/checkpoints/latest when it exists")
    allow_small_contrastive_batch: bool = Field(False, description="accept gradient accumulation > 1: the "
                                                "contrastive negatives are then micro batch × workers, not the batch")

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> TrainSection:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("set exactly one of train.steps and train.epochs")
        return self


class DeepSpeedSection(Section):
    zero_stage: Literal[0, 1, 2, 3] = 1
    config: dict[str, Any] = Field(default_factory=dict, description="extra DeepSpeed keys, merged as given")

    @field_validator("config")
    @classmethod
    def _no_derived_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key, instead in _DERIVED_DS_KEYS.items():
            if key in v:
                raise ValueError(f"{key!r} is derived by djray: set {instead} instead")
        return v


class RaySection(Section):
    num_workers: int = Field(0, ge=0, description="0: train in this process; N: N Ray Train workers")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    address: str | None = Field(None, description="cluster to attach to; default RAY_ADDRESS, else a local instance")


class OutputConfig(Section):
    path: str

    @field_validator("path")
    @classmethod
    def _local(cls, v: str) -> str:
        if "://" in v and not v.startswith("file://"):
            raise ValueError("checkpoints need a local (or shared, mounted) directory, not a URI")
        return v[len("file://"):] if v.startswith("file://") else v


class ClassificationEval(Section):
    path: str
    templates: tuple[str, ...] = DEFAULT_TEMPLATES

    @field_validator("templates")
    @classmethod
    def _templates(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return check_templates(v)


class RetrievalEval(Section):
    path: str


class EvalConfig(Section):
    classification: ClassificationEval | None = None
    retrieval: RetrievalEval | None = None
    batch_size: int = Field(64, ge=1)


class TrainConfig(Section):
    data: DataConfig
    output: OutputConfig
    model: ModelConfig = ModelConfig()
    patches: PatchesConfig = PatchesConfig()
    loss: Literal["itc", "siglip"] = "itc"
    train: TrainSection
    deepspeed: DeepSpeedSection = DeepSpeedSection()
    ray: RaySection = RaySection()
    storage: StorageConfig = StorageConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _accumulation_shrinks_the_contrastive_batch(self) -> TrainConfig:
        gas = self.grad_accum()
        if gas > 1 and not self.train.allow_small_contrastive_batch:
            raise ValueError(f"deepspeed.config.gradient_accumulation_steps: {gas} splits each step into {gas} "
                             f"micro steps, and {self.loss} sees only one micro batch × workers as negatives "
                             f"(train.batch_size / {gas}): set train.allow_small_contrastive_batch: true to accept "
                             "that, or use more workers instead")
        return self

    def grad_accum(self) -> int:
        return int(self.deepspeed.config.get("gradient_accumulation_steps", 1))

    def micro_batch(self, world_size: int) -> int:
        """Per-worker micro batch; train.batch_size must divide evenly."""
        gas = self.grad_accum()
        if gas < 1 or self.train.batch_size % (world_size * gas):
            raise ConfigError(f"train.batch_size: {self.train.batch_size} is not divisible by workers ({world_size}) "
                              f"× gradient_accumulation_steps ({gas})")
        return self.train.batch_size // (world_size * gas)

    def total_steps(self, steps_per_epoch: int) -> int:
        if self.train.steps is not None:
            return self.train.steps
        return max(1, math.ceil(float(self.train.epochs) * steps_per_epoch))


def parse_train_config(raw: Any) -> TrainConfig:
    return validate_config(TrainConfig, raw, "`data`, `train`, `output`")


def load_train_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    return parse_train_config(read_yaml(path, overrides))
