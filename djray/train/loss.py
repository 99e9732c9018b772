"""Contrastive objectives on L2-normalised embeddings (Eq. 9) and SigLIP.

`itc_loss` is CLIP's InfoNCE in both directions with a learnable temperature: ½·[CE(i→t) + CE(t→i)], i.e. Eq. 9
up to the constant ½ (same optimum; AdamW is invariant to a constant loss scale). With more than one worker the
features of every worker are gathered (with gradient), so each worker's rows see the global batch as negatives
(open_clip's `local_loss` + `gather_with_grad`).

`siglip_loss` is the pairwise sigmoid loss of Zhai et al. (2023): −Σ log σ(z_ij·(t·x_i·y_j + b)) / |B_local|.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.nn import functional as F


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward sums every worker's gradient for this worker's slice (all_reduce works
    on every backend, gloo included)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        rank, size = world()
        parts = [torch.empty_like(x) for _ in range(size)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.rows = rank, x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather(x: torch.Tensor) -> torch.Tensor:
    return _GatherWithGrad.apply(x) if world()[1] > 1 else x


def itc_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    rank, size = world()
    b = img.shape[0]
    labels = torch.arange(b, device=img.device) + rank * b
    all_img, all_txt = gather(img), gather(txt)
    logits_i2t = scale * img @ all_txt.t()
    logits_t2i = scale * txt @ all_img.t()
    return 0.5 * (F.cross_entropy(logits_i2t.float(), labels) + F.cross_entropy(logits_t2i.float(), labels))


def siglip_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    rank, size = world()
    b = img.shape[0]
    all_txt = gather(txt)
    logits = (scale * img @ all_txt.t() + bias).float()
    signs = -torch.ones_like(logits)
    idx = torch.arange(b, device=img.device)
    signs[idx, idx + rank * b] = 1.0
    return -F.logsigmoid(signs * logits).sum() / b
