"""Compatibility shims for the CPU environment.

Every torchvision wheel is built against CUDA torch. On a CPU-only torch its C++ extension fails to load and
`import torchvision` (hence `import timm` / `import open_clip`) dies with
"operator torchvision::nms does not exist". djray never calls these detection ops, so when the extension did not
register them we define their schemas (no kernels) before torchvision is imported. Call `patch_torchvision()` before
importing timm or open_clip; it is a no-op when torch is missing or the real ops exist.
"""

from __future__ import annotations

_PATCHED = False


def patch_torchvision() -> None:
    global _PATCHED
    if _PATCHED:
        return
    _PATCHED = True
    try:
        import torch
    except ImportError:
        return
    try:
        torch.ops.torchvision.nms  # noqa: B018 - probes whether the real op is registered
        return
    except (AttributeError, RuntimeError):
        pass
    lib = torch.library.Library("torchvision", "DEF")  # kept alive through the module global below
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    globals()["_TORCHVISION_LIB"] = lib
