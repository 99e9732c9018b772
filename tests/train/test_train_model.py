"""The CLIP towers: kept-token gather ≡ masking the dropped tokens out; raster patch order; trimmed text; losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from djray.train.archs import ARCHS
from djray.train.loss import itc_loss, siglip_loss
from djray.train.model import build_model, key_mask


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model(ARCHS["clip_tiny"].with_image_size(96), seed=3).eval()  # 6×6 grid


def test_gather_equals_attention_mask_on_dropped_keys(tiny):
    """[CLS] + kept tokens through the transformer == all tokens with -inf on the dropped keys (for every query)."""
    vis = tiny.visual
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 96, 96, generator=g)
    n, k = vis.num_patches, 13
    keep = torch.stack([torch.randperm(n, generator=g)[:k].sort().values for _ in range(3)])
    with torch.no_grad():
        gathered = vis(x, keep)
        masked = vis(x, None, attn_mask=key_mask(keep, n, vis.heads))
        full = vis(x, None)
    torch.testing.assert_close(gathered, masked, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(gathered, full, atol=1e-3)  # dropping tokens changes the output: the test has teeth


def test_kept_tokens_carry_their_own_position_embedding(tiny):
    """Permuting which patches are kept changes the output; the same set in another order does not (pos-emb per
    patch, attention is permutation-equivariant)."""
    vis = tiny.visual
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    keep = torch.tensor([[0, 5, 7, 20, 35]])
    with torch.no_grad():
        a = vis(x, keep)
        b = vis(x, keep[:, [3, 1, 4, 0, 2]])
        c = vis(x, torch.tensor([[1, 5, 7, 20, 35]]))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(a, c, atol=1e-4)


def test_patchify_is_raster_order_and_equals_the_stride_p_conv(tiny):
    vis = tiny.visual
    p, g = vis.patch_size, vis.grid
    x = torch.zeros(1, 3, 96, 96)
    for r in range(g):
        for c in range(g):
            x[:, :, r * p:(r + 1) * p, c * p:(c + 1) * p] = r * g + c
    patches = vis.patchify(x)
    assert torch.equal(patches[0, :, 0], torch.arange(g * g, dtype=torch.float32))
    y = torch.randn(2, 3, 96, 96)
    w = vis.patch_embed.weight.reshape(-1, 3, p, p)
    conv = F.conv2d(y, w, stride=p).flatten(2).transpose(1, 2)  # open_clip's conv1 → (B, N, width)
    torch.testing.assert_close(vis.patch_embed(vis.patchify(y)), conv, rtol=1e-4, atol=1e-4)


def test_trimmed_text_equals_full_context(tiny):
    from open_clip.tokenizer import SimpleTokenizer

    from djray.train.batches import trim_tokens

    tok = SimpleTokenizer(context_length=77)(["a red circle", "two blue squares on a striped background"])
    short = torch.from_numpy(trim_tokens(tok.numpy()))
    assert short.shape[1] < 77
    with torch.no_grad():
        torch.testing.assert_close(tiny.encode_text(short), tiny.encode_text(tok), rtol=1e-5, atol=1e-5)


def test_itc_loss_matches_clip_formula_and_siglip_is_finite():
    g = torch.Generator().manual_seed(4)
    img = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    txt = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    scale = torch.tensor([10.0])
    logits = (scale * img @ txt.T).numpy().astype(np.float64)

    def ce(lg):
        lg = lg - lg.max(axis=1, keepdims=True)
        return float(np.mean(-(np.diag(lg) - np.log(np.exp(lg).sum(axis=1)))))

    assert itc_loss(img, txt, scale).item() == pytest.approx(0.5 * (ce(logits) + ce(logits.T)), rel=1e-5)
    # perfect alignment with a large temperature → ~0
    assert itc_loss(img, img, torch.tensor([100.0])).item() < 0.2
    s = siglip_loss(img, txt, torch.tensor([10.0]), torch.tensor([-10.0]))
    assert math.isfinite(s.item()) and s.item() > 0


def _siglip_numpy(img, txt, t, b):
    """Zhai et al. (2023), Alg. 1: -Σ_ij log σ(z_ij (t·x_i·y_j + b)) / |B|, z = +1 on the diagonal, -1 elsewhere."""
    logits = t * np.asarray(img, np.float64) @ np.asarray(txt, np.float64).T + b
    z = 2.0 * np.eye(len(logits)) - 1.0
    return float(np.sum(np.log1p(np.exp(-z * logits))) / len(logits))


def test_siglip_loss_matches_the_paper_formula():
    # constructed: orthonormal pairs, t = 10, b = -10 → diagonal logits 0, off-diagonal -10
    e = torch.eye(3, 8)
    want = (3 * math.log(2.0) + 6 * math.log1p(math.exp(-10.0))) / 3
    assert siglip_loss(e, e, torch.tensor([10.0]), torch.tensor([-10.0])).item() == pytest.approx(want, rel=1e-6)
    assert _siglip_numpy(e.numpy(), e.numpy(), 10.0, -10.0) == pytest.approx(want, rel=1e-12)
    # swapped pairs: the positives are now the -10 logits
    swapped = e[[1, 0, 2]]
    want = (2 * math.log1p(math.exp(10.0)) + 3 * math.log(2.0) + 4 * math.log1p(math.exp(-10.0))) / 3
    assert siglip_loss(e, swapped, torch.tensor([10.0]), torch.tensor([-10.0])).item() == pytest.approx(want, rel=1e-6)
    # random unit vectors, a few temperatures and biases
    g = torch.Generator().manual_seed(7)
    for t, b in ((10.0, -10.0), (3.0, 0.5), (25.0, -4.0)):
        img = F.normalize(torch.randn(6, 16, generator=g), dim=-1)
        txt = F.normalize(torch.randn(6, 16, generator=g), dim=-1)
        got = siglip_loss(img, txt, torch.tensor([t]), torch.tensor([b])).item()
        assert got == pytest.approx(_siglip_numpy(img.numpy(), txt.numpy(), t, b), rel=1e-5)
