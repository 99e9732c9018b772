"""ClipTextScorer: the CLIP text embedding of a recaption and its alignment with the row's stored CLIP image embedding
(infogrowth `recaption: true`, seed-algorithms §6.2: align' = cos(I_i, T'_i)).

The same model, weights, tokenizer and precision as phase A's `ClipEmbedder` (it is one, loaded from the job's
`clip:` section, and embeds text with its `encode_texts`), so align' and the phase-A `clip_score` are the same
function of (image, caption): a recaption equal to the original caption scores the original alignment (to float
rounding: the text tower's length follows the batch). Reads ``_recaption`` (null: nothing to embed)
and ``clip_image_embedding`` (L2-normalised, from the signals store: no image is decoded again). Writes, per row with
a recaption:

* ``_recaption_embedding`` — the L2-normalised float32 text embedding (the gain step indexes it for rescued rows);
* ``recaption_score``      — float(dot(image, text)) of the float32 vectors, stored as float32 like `clip_score`.

A non-finite embedding leaves both null (the row is then not rescued) instead of failing the batch.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from djray import schema as S
from djray.ops.vision.clip_embed import ClipEmbedder, ClipParams


class ClipTextScorer(ClipEmbedder):
    name: ClassVar[str] = "infogrowth_recaption_clip"
    writes: ClassVar[tuple[str, ...]] = (S.RECAPTION_EMBEDDING, S.RECAPTION_SCORE)

    def __init__(self, params: ClipParams, vision_image_size: int | None = None, cache_dir: str | None = None):
        super().__init__(params, vision_image_size, cache_dir)
        self.reads = (S.RECAPTION, S.CLIP_IMAGE_EMBEDDING, S.REJECT_REASON)

    def __call__(self, batch: pa.Table) -> dict[str, Any]:
        from djray.ops.base import alive_mask
        from djray.ops.vision.dino_patch import even_chunks

        if self.model is None:
            self.setup()
        n = batch.num_rows
        texts = batch.column(S.RECAPTION).to_pylist()
        images = batch.column(S.CLIP_IMAGE_EMBEDDING).to_pylist()
        rows = np.array([i for i in np.flatnonzero(alive_mask(batch))
                         if texts[i] is not None and images[i] is not None], dtype=np.int64)
        emb: list[np.ndarray | None] = [None] * n
        score: list[float | None] = [None] * n
        for chunk in even_chunks(rows, self.params.batch_size):
            txt = self.encode_texts([texts[r] for r in chunk])
            for j, r in enumerate(chunk):
                if np.isfinite(txt[j]).all():
                    emb[r] = txt[j]
                    score[r] = float(np.dot(np.asarray(images[r], np.float32), txt[j]))
        return {S.RECAPTION_EMBEDDING: pa.array([None if e is None else e.tolist() for e in emb],
                                                pa.list_(pa.float32())),
                S.RECAPTION_SCORE: pa.array(score, pa.float32())}
