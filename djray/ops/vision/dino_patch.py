"""DinoPatchScorer: the vision branch in one GPU pass per image (paper §3.2, Eq. 2–4; seed-algorithms.md §2–3).

Reads the canonical crop (`_pixels`, uint8 (S, S, 3) RGB, C-order) of alive rows, normalises it with the backbone's
mean/std and runs one DINO forward (`djray.models.dino.forward_dino`) that yields

* Eq. 2 scores: the last block's [CLS] query against all N keys (norm1 output, qkv bias, scale = head_dim^-0.5),
  softmax over all N tokens in fp32, prefix tokens dropped afterwards, heads aggregated per `aggregation`:
  ``mean_prob`` (default) | ``mean_logit`` (pre-softmax, paper's literal Eq. 2 averaged over heads) | ``max_prob`` |
  ``head:I`` (post-softmax probabilities of head I; within one head the ranking equals Eq. 2's logits);
* Eq. 3 retention: `patch_idx` from `select_patches` (ratio, strategy, seed, sample key);
* Eq. 4 class evidence from the same forward (`class_head`), and `vis_embedding` = final-norm [CLS] of the last block.

Rejected rows get nulls in every column it writes. An alive row without pixels (an upstream contract breach) or with
non-finite scores is rejected here (stage ``vision``) instead of failing its batch.
"""

from __future__ import annotations

import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from djray import schema as S
from djray.models.precision import block_probe, resolve_precision
from djray.ops.base import Op, Resources, alive_mask, forward_pool
from djray.ops.vision.class_head import build_head, probabilities, top_classes
from djray.ops.vision.params import VisionParams
from djray.patches import select_patches

log = logging.getLogger(__name__)

MISSING_PIXELS = S.Reason.MISSING_PIXELS
NONFINITE_SCORES = S.Reason.NONFINITE_SCORES

_TYPES = {f.name: f.type for f in S.VISION_FIELDS}


def aggregate_heads(logits, num_prefix_tokens: int, aggregation: str):
    """(B, heads, N) fp32 CLS→token logits → (B, m) patch scores. Softmax runs over all N tokens before slicing."""
    import torch

    logits = logits.float()
    if aggregation == "mean_logit":
        return logits[:, :, num_prefix_tokens:].mean(dim=1)
    probs = torch.softmax(logits, dim=-1)[:, :, num_prefix_tokens:]
    if aggregation == "mean_prob":
        return probs.mean(dim=1)
    if aggregation == "max_prob":
        return probs.amax(dim=1)
    if aggregation.startswith("head:"):
        i = int(aggregation.split(":", 1)[1])
        if not 0 <= i < probs.shape[1]:
            raise ValueError(f"vision.aggregation: {aggregation} but the model has {probs.shape[1]} heads")
        return probs[:, i]
    raise ValueError(f"unknown aggregation {aggregation!r}")


class DinoPatchScorer(Op):
    name: ClassVar[str] = "dino_patch"
    stage: ClassVar[str] = S.Stage.VISION
    reads: ClassVar[tuple[str, ...]] = (S.PIXELS, S.KEY, S.SRC_SHARD, S.SRC_INDEX, S.REJECT_REASON)
    writes: ClassVar[tuple[str, ...]] = tuple(f.name for f in S.VISION_FIELDS)
    stateful: ClassVar[bool] = True
    thread_safe: ClassVar[bool] = True  # forward_dino and the head are functions of the batch; no state per call

    def __init__(self, params: VisionParams | None = None, resources: Resources | None = None,
                 cache_dir: str | None = None):
        params = params or VisionParams()
        r = params.resources
        super().__init__(params, resources or r.for_op(params.batch_size))
        self.params: VisionParams = params
        self.cache_dir = cache_dir
        self.model = None
        self.precision = params.precision if params.precision != "auto" else "fp32"  # resolved in setup()
        self.precision_record: dict[str, Any] = {}
        self.forwards: ThreadPoolExecutor | None = None

    # ---- lifecycle --------------------------------------------------------------------------------------------
    def setup(self) -> None:
        if self.model is not None:
            return
        import torch

        from djray.models.dino import build_dino

        p = self.params
        if self.resources.threads:
            torch.set_num_threads(self.resources.threads)  # explicit: Ray's OMP_NUM_THREADS is not the op's choice
        self.device = model_device(self.resources.num_gpus, "vision")
        if p.precision == "fp16" and self.device != "cuda":
            raise ValueError("vision.precision: fp16 autocast needs a CUDA device; this worker runs on CPU "
                             "(use bf16 or fp32)")
        self.model, self.backbone = build_dino(p.model, p.weights, p.image_size, seed=p.seed, device=self.device,
                                               cache_dir=self.cache_dir)
        if p.aggregation.startswith("head:") and int(p.aggregation[5:]) >= self.model.blocks[-1].attn.num_heads:
            raise ValueError(f"vision.aggregation: {p.aggregation} but {p.model} has "
                             f"{self.model.blocks[-1].attn.num_heads} heads")
        if self.backbone["grid_h"] * self.backbone["patch_size"] != p.image_size:
            raise ValueError(f"vision.image_size {p.image_size} is not a multiple of the patch size "
                             f"{self.backbone['patch_size']} of {p.model}")
        self.mean = torch.tensor(self.backbone["mean"], device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(self.backbone["std"], device=self.device).view(1, 3, 1, 1)
        tokens = self.backbone["grid_h"] * self.backbone["grid_w"] + int(self.model.num_prefix_tokens)
        probe_run = block_probe(self.model.blocks[0], tokens, int(self.model.embed_dim), self.device)
        self.precision_record = resolve_precision(p.precision, self.device, probe_run)
        self.precision = self.precision_record["chosen"]
        self.head = build_head(p.head, seed=p.seed, cache_dir=self.cache_dir)
        self.head.setup(self.backbone, int(self.model.embed_dim), self.device, self.precision)
        self.forwards = forward_pool(self.resources, self.name)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "forwards": None}  # threads do not travel; setup() makes them where the op runs

    def describe(self) -> dict[str, Any]:
        """What the manifest records: parameters, resolved sources, checksums, geometry and normalisation."""
        out: dict[str, Any] = {"op": self.name, "params": self.params.model_dump(mode="json")}
        if self.model is not None:
            import torch

            out.update(backbone=self.backbone, head=self.head.description, device=self.device,
                       precision=self.precision_record, threads=torch.get_num_threads(),
                       resources=dataclasses.asdict(self.resources))
        return out

    # ---- batch ------------------------------------------------------------------------------------------------
    def __call__(self, batch: pa.Table) -> dict[str, Any]:
        import torch

        if self.model is None:
            self.setup()
        p, n = self.params, batch.num_rows
        alive = alive_mask(batch)
        pix = batch.column(S.PIXELS)
        present = ~np.asarray(pix.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        rows = np.flatnonzero(alive & present)
        reasons: list[str | None] = [None] * n
        details: list[str | None] = [None] * n
        for i in np.flatnonzero(alive & ~present):
            reasons[i], details[i] = MISSING_PIXELS, "alive row reached the vision stage without a canonical crop"
        images = pixels_array(pix, p.image_size) if rows.size else None

        scores = [None] * n
        embeds = [None] * n
        probs = [None] * n

        def forward(chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
            u8 = torch.from_numpy(images[chunk]).to(self.device)
            x = (u8.permute(0, 3, 1, 2).float().div_(255.0) - self.mean) / self.std
            out = self._forward(x)
            s = aggregate_heads(out.cls_logits, out.num_prefix_tokens, p.aggregation).cpu().numpy()
            e = out.embedding.float().cpu().numpy()
            pr = None
            if self.head.kind != "none":
                pr = probabilities(self.head.logits(u8, out).float().cpu().numpy(), p.head.prob)
            return s, e, pr

        chunks = even_chunks(rows, p.batch_size)
        results = self.forwards.map(forward, chunks) if self.forwards else map(forward, chunks)
        for chunk, (s, e, pr) in zip(chunks, results):
            for j, r in enumerate(chunk):
                if not np.isfinite(s[j]).all():
                    reasons[r], details[r] = NONFINITE_SCORES, f"non-finite patch scores ({self.precision})"
                    continue
                scores[r], embeds[r] = s[j].astype(np.float32), e[j].astype(np.float32)
                probs[r] = pr[j] if pr is not None else None
        return self._columns(batch, scores, embeds, probs, reasons, details)

    def _forward(self, x):
        from djray.models.dino import forward_dino

        return forward_dino(self.model, x, precision=self.precision)

    def _columns(self, batch, scores, embeds, probs, reasons, details) -> dict[str, Any]:
        p, n = self.params, batch.num_rows
        ok = [s is not None for s in scores]
        keys = batch.column(S.KEY).to_pylist()
        shards = batch.column(S.SRC_SHARD).to_pylist()
        idx = batch.column(S.SRC_INDEX).to_pylist()
        patch_idx = [None] * n
        classes: list[Any] = [None] * n
        evidence: list[Any] = [None] * n
        for r in np.flatnonzero(ok):
            key = keys[r] if keys[r] is not None else f"{shards[r]}:{idx[r]}"
            patch_idx[r] = select_patches(scores[r], p.ratio, p.strategy, p.seed, key, p.strata, p.mix_alpha)
            if probs[r] is None:
                classes[r], evidence[r] = [], []
            else:
                (c,), (ev,) = top_classes(probs[r][None], self.head.labels, p.head.top_k, p.head.threshold)
                classes[r], evidence[r] = c, ev
        geo = self.backbone

        def scalar(v):
            return pa.array([v if o else None for o in ok], type=pa.int16())

        out: dict[str, Any] = {
            S.PATCH_SIZE: scalar(geo["patch_size"]),
            S.GRID_H: scalar(geo["grid_h"]),
            S.GRID_W: scalar(geo["grid_w"]),
            S.PATCH_SCORES: list_array(scores, _TYPES[S.PATCH_SCORES]),
            S.PATCH_IDX: list_array(patch_idx, _TYPES[S.PATCH_IDX]),
            S.VIS_CLASSES: pa.array(classes, type=_TYPES[S.VIS_CLASSES]),
            S.VIS_EVIDENCE: pa.array(evidence, type=_TYPES[S.VIS_EVIDENCE]),
            S.VIS_EMBEDDING: list_array(embeds, _TYPES[S.VIS_EMBEDDING]),
        }
        if any(r is not None for r in reasons):
            out[S.REJECT_REASON] = reasons
            out[S.REJECT_DETAIL] = details
        return out


def model_device(num_gpus: float | None, section: str) -> str:
    """"cuda" when the actor holds a GPU (or, unresolved, when one is visible), else "cpu"."""
    import torch

    if num_gpus is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if num_gpus > 0 and not torch.cuda.is_available():
        log.warning("%s.resources.num_gpus=%s but no CUDA device is visible; running on CPU", section, num_gpus)
        return "cpu"
    return "cuda" if num_gpus > 0 else "cpu"


def even_chunks(rows: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """`rows` in ceil(n / batch_size) forwards of near-equal size: 201 rows at 64 → 51/50/50/50, not 64/64/64/9."""
    if rows.size == 0:
        return []
    return np.array_split(rows, -(-rows.size // batch_size))


def pixels_array(col: pa.Array | pa.ChunkedArray, image_size: int) -> np.ndarray:
    """(n, S, S, 3) uint8 view of the `_pixels` column (null rows hold garbage: index only alive rows)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    width = image_size * image_size * 3
    n = len(arr)
    if pa.types.is_fixed_size_binary(arr.type):
        if arr.type.byte_width != width:
            raise ValueError(f"{S.PIXELS} holds {arr.type.byte_width}-byte crops but vision.image_size="
                             f"{image_size} needs {width} (decode and vision image_size differ)")
        buf = arr.buffers()[1]
        data = np.frombuffer(buf, dtype=np.uint8)[arr.offset * width:(arr.offset + n) * width]
        return data.reshape(n, image_size, image_size, 3)
    out = np.zeros((n, image_size, image_size, 3), dtype=np.uint8)  # variable-size binary: copy row by row
    for i, v in enumerate(arr.to_pylist()):
        if v is not None:
            if len(v) != width:
                raise ValueError(f"{S.PIXELS} row {i} has {len(v)} bytes, expected {width}")
            out[i] = np.frombuffer(v, dtype=np.uint8).reshape(image_size, image_size, 3)
    return out


def list_array(values: list[np.ndarray | None], type_: pa.ListType) -> pa.Array:
    """A list<...> column from per-row numpy arrays (None → null), built from offsets without Python loops."""
    lengths = np.array([0 if v is None else len(v) for v in values], dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    present = [v for v in values if v is not None]
    vt = type_.value_type
    flat = np.concatenate(present) if present else np.zeros(0)
    flat = pa.array(flat.astype(vt.to_pandas_dtype(), copy=False), type=vt)
    mask = pa.array([v is None for v in values], type=pa.bool_())
    return pa.ListArray.from_arrays(pa.array(offsets), flat, type=type_, mask=mask)
