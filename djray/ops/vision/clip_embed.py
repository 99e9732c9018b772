"""ClipEmbedder: CLIP image and caption embeddings and their cosine, in phase A (config section ``clip``).

Reads the crop the decode stage already made (images are decoded once): the canonical crop `_pixels` when CLIP's
input size equals `vision.image_size`, else `_clip_pixels`, a second crop decode emits at CLIP's size with the same
rule (shorter side → S with PIL bicubic, centre crop at floor offsets). It normalises with the model's mean/std
(open_clip's `preprocess_cfg`; OpenAI's for ViT-B-16) and runs `encode_image`; the caption (`caption_raw`, the
source caption) goes through open_clip's tokenizer (77 tokens, truncated) and `encode_text` — run on the tokens up to
the batch's last end-of-text token (`models.clip.encode_text`: the same embedding, without the padding's cost).
Writes, per alive row:

* `clip_image_embedding`, `clip_text_embedding` — L2-normalised, float32 (float16 storage changes SemDeDup
  decisions: tests/ops/vision/test_clip_embed.py);
* `clip_score` — their cosine, computed from the float32 embeddings.

A non-finite or zero embedding rejects the row (stage ``clip``, `nonfinite_embedding`) instead of failing the batch.
The manifest's model record names the weights, checksums and the whole preprocessing.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from djray import schema as S
from djray.models import weights as W
from djray.ops.base import RUNTIME, Op, Params, ResourcesParams, alive_mask, forward_pool

log = logging.getLogger(__name__)
_TYPES = {f.name: f.type for f in S.CLIP_SIGNAL_FIELDS}


class ClipParams(Params):
    model: str = "ViT-B-16"  # an open_clip model name
    weights: str = "hub"  # hub | hub:TAG | file:PATH | s3://bucket/key | random (as vision.weights)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "fp32"  # auto: as vision.precision
    batch_size: int = Field(64, ge=1, json_schema_extra=RUNTIME)
    resources: ResourcesParams = Field(ResourcesParams(), json_schema_extra=RUNTIME)  # as vision.resources

    @field_validator("weights")
    @classmethod
    def _weights_syntax(cls, v: str) -> str:
        W.parse_source(v)
        return v.strip()

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        from djray.models.clip import input_size

        input_size(v)  # ValueError for a name open_clip does not know
        return v

    def validate_sources(self, prefix: str = "clip") -> None:
        try:
            W.check_source(self.weights)
        except ValueError as e:
            raise ValueError(f"{prefix}.weights: {e}") from None


def clip_pixels_column(clip: ClipParams, vision_image_size: int | None) -> tuple[str, int]:
    """(column, size) of the crop CLIP reads: the vision crop when the sizes agree, else its own crop."""
    from djray.models.clip import input_size

    size = input_size(clip.model)
    return (S.PIXELS, size) if vision_image_size == size else (S.CLIP_PIXELS, size)


class ClipEmbedder(Op):
    name: ClassVar[str] = "clip_embed"
    stage: ClassVar[str] = S.Stage.CLIP
    writes: ClassVar[tuple[str, ...]] = tuple(f.name for f in S.CLIP_SIGNAL_FIELDS)
    stateful: ClassVar[bool] = True
    thread_safe: ClassVar[bool] = True  # the towers are read-only; the tokenizer is called under a lock

    def __init__(self, params: ClipParams | None = None, vision_image_size: int | None = None,
                 cache_dir: str | None = None):
        params = params or ClipParams()
        r = params.resources
        super().__init__(params, r.for_op(params.batch_size))
        self.precision = params.precision if params.precision != "auto" else "fp32"  # resolved in setup()
        self.precision_record: dict[str, Any] = {}
        self.params: ClipParams = params
        self.pixels, self.size = clip_pixels_column(params, vision_image_size)
        self.reads = (self.pixels, S.CAPTION_RAW, S.REJECT_REASON)
        self.cache_dir = cache_dir
        self.model = None
        self.forwards: ThreadPoolExecutor | None = None

    def setup(self) -> None:
        if self.model is not None:
            return
        import torch

        from djray._compat import patch_torchvision
        from djray.models.clip import build_clip

        patch_torchvision()
        import open_clip

        from djray.models.precision import resolve_precision
        from djray.ops.vision.dino_patch import model_device

        if self.resources.threads:
            torch.set_num_threads(self.resources.threads)
        self.device = model_device(self.resources.num_gpus, "clip")
        if self.params.precision == "fp16" and self.device != "cuda":
            raise ValueError("clip.precision: fp16 autocast needs a CUDA device; this worker runs on CPU")
        self.model, self.built = build_clip(self.params.model, self.params.weights, device=self.device,
                                            cache_dir=self.cache_dir)
        if self.built["image_size"] != [self.size, self.size]:
            raise ValueError(f"clip.model: {self.params.model} takes {self.built['image_size']}, planned {self.size}")
        self.tokenizer = open_clip.get_tokenizer(self.params.model)
        self.tokenizer_lock = threading.Lock()  # a Hugging Face tokenizer may refuse calls from two threads at once
        self.mean = torch.tensor(self.built["mean"], device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(self.built["std"], device=self.device).view(1, 3, 1, 1)
        self.precision_record = resolve_precision(self.params.precision, self.device, self._probe_run())
        self.precision = self.precision_record["chosen"]
        self.forwards = forward_pool(self.resources, self.name)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "forwards": None}  # threads do not travel; setup() makes them where the op runs

    def _probe_run(self):
        """The `precision: auto` probe: the image tower's first block (a ViT tower), else 8 whole image embeddings."""
        from djray.models.precision import block_probe

        visual = self.model.visual
        blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
        if blocks is not None and getattr(visual, "positional_embedding", None) is not None:
            tokens, width = visual.positional_embedding.shape
            return block_probe(blocks[0], int(tokens), int(width), self.device,
                               seq_first=not getattr(visual.transformer, "batch_first", True))

        def run(precision: str) -> None:
            self.precision = precision
            self.embed(np.zeros((8, self.size, self.size, 3), np.uint8), ["a photo"] * 8)

        return run

    def describe(self) -> dict[str, Any]:
        """Manifest record: parameters, weights and checksums, and the preprocessing CLIP saw."""
        out: dict[str, Any] = {"op": self.name, "params": self.params.model_dump(mode="json")}
        if self.model is not None:
            out.update(model=self.built, device=self.device, precision=self.precision_record, preprocessing={
                "source_column": self.pixels, "shared_with_vision": self.pixels == S.PIXELS,
                "resize": f"shorter side to {self.size}, PIL bicubic", "long_side": "max(S, round(long * S / short))",
                "crop": f"center {self.size}x{self.size} at floor((w-S)/2), floor((h-S)/2)",
                "mean": self.built["mean"], "std": self.built["std"],
                "text": {"input": S.CAPTION_RAW, "tokenizer": f"open_clip.get_tokenizer({self.params.model!r})",
                         "context_length": int(getattr(self.tokenizer, "context_length", 77))}})
        return out

    def __call__(self, batch: pa.Table) -> dict[str, Any]:
        from djray.ops.vision.dino_patch import even_chunks, list_array, pixels_array

        if self.model is None:
            self.setup()
        n = batch.num_rows
        alive = alive_mask(batch)
        pix = batch.column(self.pixels)
        present = ~np.asarray(pix.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        rows = np.flatnonzero(alive & present)
        reasons: list[str | None] = [None] * n
        details: list[str | None] = [None] * n
        for i in np.flatnonzero(alive & ~present):
            reasons[i], details[i] = S.Reason.MISSING_PIXELS, f"alive row reached the clip stage without {self.pixels}"
        images = pixels_array(pix, self.size) if rows.size else None
        captions = batch.column(S.CAPTION_RAW).to_pylist()
        img_out: list[np.ndarray | None] = [None] * n
        txt_out: list[np.ndarray | None] = [None] * n
        score: list[float | None] = [None] * n
        chunks = even_chunks(rows, self.params.batch_size)

        def embed(chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return self.embed(images[chunk], [captions[r] or "" for r in chunk])

        results = self.forwards.map(embed, chunks) if self.forwards else map(embed, chunks)
        for chunk, (img, txt) in zip(chunks, results):
            for j, r in enumerate(chunk):
                if not (np.isfinite(img[j]).all() and np.isfinite(txt[j]).all()):
                    reasons[r], details[r] = S.Reason.NONFINITE_EMBEDDING, f"non-finite CLIP embedding ({self.precision})"
                    continue
                img_out[r], txt_out[r] = img[j], txt[j]
                score[r] = float(np.dot(img[j], txt[j]))
        out: dict[str, Any] = {
            S.CLIP_IMAGE_EMBEDDING: list_array(img_out, _TYPES[S.CLIP_IMAGE_EMBEDDING]),
            S.CLIP_TEXT_EMBEDDING: list_array(txt_out, _TYPES[S.CLIP_TEXT_EMBEDDING]),
            S.CLIP_SCORE: pa.array(score, pa.float32()),
        }
        if any(r is not None for r in reasons):
            out[S.REJECT_REASON], out[S.REJECT_DETAIL] = reasons, details
        return out

    def embed(self, pixels: np.ndarray, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (B, S, S, 3) crops + captions → L2-normalised float32 (B, E) image and text embeddings."""
        import torch

        from djray.models.dino import autocast

        x = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device)
        x = (x.permute(0, 3, 1, 2).float().div_(255.0) - self.mean) / self.std
        with torch.inference_mode(), autocast(x.device.type, self.precision):
            img = self.model.encode_image(x)
        return _unit(img.float().cpu().numpy()), self.encode_texts(captions)

    def encode_texts(self, captions: list[str]) -> np.ndarray:
        """Captions → L2-normalised float32 (B, E) text embeddings (the tokenizer, the tower up to the batch's last
        end-of-text token, the op's precision)."""
        import torch

        from djray.models.clip import encode_text
        from djray.models.dino import autocast

        with self.tokenizer_lock:
            tokens = self.tokenizer(captions)
        tokens = tokens.to(self.device)
        with torch.inference_mode(), autocast(tokens.device.type, self.precision):
            txt = encode_text(self.model, tokens)
        return _unit(txt.float().cpu().numpy())


def _unit(v: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = v / norm
    out[~np.isfinite(norm[:, 0]) | (norm[:, 0] == 0)] = np.nan
    return out.astype(np.float32)
