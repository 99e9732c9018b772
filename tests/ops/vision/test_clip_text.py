"""ClipTextScorer: align' of a recaption is phase A's function of (image, caption) — the same caption scores the same
alignment — and a row without a recaption is left null."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from corpus import enc, noise

from djray import schema as S
from djray._compat import patch_torchvision
from djray.ops.base import apply_op_output
from djray.ops.decode import DecodeOp, DecodeParams
from djray.ops.vision.clip_embed import ClipEmbedder, ClipParams
from djray.ops.vision.clip_text import ClipTextScorer

patch_torchvision()
pytest.importorskip("open_clip")


def test_recaption_score_matches_phase_a():
    captions = ["a red square", "two dogs on a sofa", "a noisy picture"]
    n = len(captions)
    src = pa.table({S.KEY: [f"k{i}" for i in range(n)], S.SRC_SHARD: ["s"] * n, S.SRC_INDEX: list(range(n)),
                    S.IMAGE: pa.array([enc(noise(300, 200, seed=i), "JPEG") for i in range(n)], pa.binary()),
                    S.CAPTION_RAW: captions,
                    **{c: pa.nulls(n, pa.string()) for c in (S.REJECT_STAGE, S.REJECT_REASON, S.REJECT_DETAIL)}})
    decode = DecodeOp(DecodeParams(image_size=224))
    decode.setup()
    batch = apply_op_output(src, decode, decode(src))
    params = ClipParams(weights="random", batch_size=2)
    phase_a = ClipEmbedder(params, vision_image_size=224)
    phase_a.setup()
    signals = apply_op_output(batch, phase_a, phase_a(batch))

    scorer = ClipTextScorer(params)
    scorer.setup()
    rows = signals.append_column(S.RECAPTION, pa.array([captions[0], None, "a completely different caption"]))
    out = scorer(rows)
    assert set(out) == set(scorer.writes)
    score, emb = out[S.RECAPTION_SCORE].to_pylist(), out[S.RECAPTION_EMBEDDING].to_pylist()
    assert score[1] is None and emb[1] is None
    assert score[0] == pytest.approx(signals.column(S.CLIP_SCORE)[0].as_py(), abs=1e-5)
    np.testing.assert_allclose(emb[0], signals.column(S.CLIP_TEXT_EMBEDDING)[0].as_py(), atol=1e-5)
    img = np.asarray(signals.column(S.CLIP_IMAGE_EMBEDDING)[2].as_py(), np.float32)
    assert score[2] == pytest.approx(float(np.dot(img, np.asarray(emb[2], np.float32))), abs=1e-6)
    assert abs(np.linalg.norm(emb[2]) - 1) < 1e-5 and score[2] != pytest.approx(score[0], abs=1e-4)
