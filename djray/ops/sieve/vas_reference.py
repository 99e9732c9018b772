"""vas reference sets (`target: {kind: reference, path | images}`): the config target, the Parquet format of a set of
CLIP image embeddings, and S = (1/M) Σ g gᵀ read from one.

A reference file holds one `clip_image_embedding` per row (other columns are ignored) and, in its Parquet metadata,
`djray.clip_model` (the open_clip model that embedded it) and, in files written since weights were recorded,
`djray.clip_weights` (JSON: the weights source and `state_sha256`, the parameter checksum of the clip model record).
`check_reference` refuses a file of another model, or of other weights when both the file and the job know theirs;
a file without recorded weights is checked on the model only.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, PrivateAttr, model_validator

from djray import schema as S
from djray.ops.base import Params
from djray.ops.sieve import kmeans as K

MODEL_KEY = b"djray.clip_model"  # Parquet metadata of a reference file: the open_clip model that embedded it
WEIGHTS_KEY = b"djray.clip_weights"  # ... and its weights: JSON {"weights": source, "state_sha256": checksum}
BLOCK = 65536  # rows per float64 Σ f fᵀ block


class ReferenceTarget(Params):
    """S from a reference set: exactly one of `path` (a Parquet of embeddings) and `images` (images to embed)."""

    kind: Literal["reference"] = "reference"
    path: str | None = Field(None, min_length=1)
    images: str | None = Field(None, min_length=1)  # folder / glob / s3:// of shards the job embeds with `clip:`
    format: Literal["webdataset", "parquet"] | None = None  # of the `images` shards; default: input.format
    model: str | None = Field(None, min_length=1)  # the CLIP model of the reference (= clip.model); needed with path
    # Set by the runtime before the step runs (never part of the config or a fingerprint): the Parquet the images
    # were embedded into, the job's CLIP model and weights identity, and the embedding pass's report.
    _embedded: str | None = PrivateAttr(None)
    _job_model: str | None = PrivateAttr(None)
    _job_weights: dict[str, Any] | None = PrivateAttr(None)
    _report: dict[str, Any] = PrivateAttr(default_factory=dict)
    _storage: Any = PrivateAttr(None)  # the job's storage options (djray.io.fs.Storage): S3 endpoint, retries

    @model_validator(mode="after")
    def _one_source(self) -> ReferenceTarget:
        if (self.path is None) == (self.images is None):
            raise ValueError("give exactly one of target.path (a Parquet of embeddings) and target.images "
                             "(reference images the job embeds with its clip: section)")
        if self.path is not None and self.model is None:
            raise ValueError("target.path needs target.model, the CLIP model that embedded the file")
        if self.images is None and self.format is not None:
            raise ValueError("target.format applies to target.images only")
        return self

    def bind(self, model: str, weights: dict[str, Any] | None, embedded: str | None = None,
             report: dict[str, Any] | None = None, storage: Any = None) -> None:
        """The runtime's part: the job's CLIP model and weights identity (what the file must match), and for
        `images` the Parquet it embedded them into, with the pass's counts."""
        self._job_model, self._job_weights, self._embedded = model, weights, embedded
        self._report = dict(report or {})
        self._storage = storage

    def reference_file(self) -> str:
        if self.path is not None:
            return self.path
        if self._embedded is None:
            raise ValueError(f"vas target.images {self.images}: not embedded yet (the runtime embeds the reference "
                             "images before phase B: djray.runtime.reference)")
        return self._embedded


def second_moment_sum(x: np.ndarray) -> np.ndarray:
    """Σ x_i x_iᵀ in float64, blockwise."""
    d = x.shape[1]
    out = np.zeros((d, d))
    for b in range(0, len(x), BLOCK):
        xb = np.asarray(x[b:b + BLOCK], dtype=np.float64)
        out += xb.T @ xb
    return out


def weights_identity(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """The weights identity of a clip model record (`ClipEmbedder.describe()["model"]`): source + parameter checksum."""
    if not record or not record.get("state_sha256"):
        return None
    return {"weights": record.get("weights"), "state_sha256": record["state_sha256"]}


def reference_metadata(model: str, weights: dict[str, Any] | None = None) -> dict[bytes, bytes]:
    meta = {MODEL_KEY: model.encode()}
    if weights is not None:
        meta[WEIGHTS_KEY] = json.dumps(weights, sort_keys=True).encode()
    return meta


def write_reference(path: str, embeddings: np.ndarray, model: str, weights: dict[str, Any] | None = None) -> None:
    """A reference set for `target: {kind: reference}`: one `clip_image_embedding` per row; the model (and, when
    given, the weights identity: `weights_identity`) in metadata."""
    emb = pa.array(list(np.asarray(embeddings, np.float32)), pa.list_(pa.float32()))
    table = pa.table({S.CLIP_IMAGE_EMBEDDING: emb}).replace_schema_metadata(reference_metadata(model, weights))
    pq.write_table(table, path)


def check_reference(path: str, meta: dict[bytes, bytes], model: str, weights: dict[str, Any] | None) -> dict | None:
    """Refuse a reference embedded by another model, or (when both sides know it) by other weights; returns the
    file's recorded weights identity (None: an older file, checked on the model only)."""
    found = meta.get(MODEL_KEY, b"").decode() or None
    if found != model:
        raise ValueError(f"vas target {path}: embedded by CLIP model {found!r}, the job's is {model!r} "
                         f"(an S from another encoder is meaningless)")
    recorded = json.loads(meta[WEIGHTS_KEY]) if WEIGHTS_KEY in meta else None
    if recorded is not None and weights is not None and recorded.get("state_sha256") != weights.get("state_sha256"):
        raise ValueError(f"vas target {path}: embedded by {model} with weights {recorded.get('weights')} "
                         f"(state_sha256 {recorded.get('state_sha256')}), the job's clip weights are "
                         f"{weights.get('weights')} (state_sha256 {weights.get('state_sha256')}): an S from other "
                         "weights is meaningless")
    return recorded


def read_reference(path: str, model: str, weights: dict[str, Any] | None = None,
                   storage: Any = None) -> tuple[np.ndarray, dict[str, Any]]:
    """(S = (1/M) Σ g gᵀ of the file's L2-normalised embeddings, what was read). Its model must be `model`, and its
    recorded weights identity, if any, must match `weights` (`check_reference`). Streamed by row group: memory is
    one d × d sum, not M × d."""
    from djray.io import fs as iofs

    fs, p = iofs.resolve(path, storage or iofs.Storage())
    with iofs.open_sequential(fs, p) as f:
        pf = pq.ParquetFile(f)
        recorded = check_reference(path, pf.schema_arrow.metadata or {}, model, weights)
        total, m = None, 0
        for batch in pf.iter_batches(columns=[S.CLIP_IMAGE_EMBEDDING], batch_size=BLOCK):
            g = K.unit_rows(pa.Table.from_batches([batch]), S.CLIP_IMAGE_EMBEDDING)
            if len(g):
                total = second_moment_sum(g) if total is None else total + second_moment_sum(g)
                m += len(g)
    if m == 0:
        raise ValueError(f"vas target {path}: no embeddings")
    checked = "model and weights" if recorded is not None and weights is not None else "model"
    return total / m, {"reference_rows": m, "reference_weights": recorded, "checked": checked}
