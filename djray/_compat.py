"""Compatibility shims for the CPU environment.

PyPI's torchvision wheels are built against CUDA torch. Beside a CPU-only torch their C++ extension fails to load and
`import torchvision` (hence `import timm` / `import open_clip`) dies with
"operator torchvision::nms does not exist". djray never calls these detection ops, so when the extension cannot
register them we define their schemas (no kernels) before torchvision is imported. Where the extension does load (a
torch and torchvision of one build: CUDA images, GPU machines, CPU wheels of both) it is loaded here first, so that
the real ops are registered and no schema is defined twice (torch aborts the process on a duplicate definition).
Call `patch_torchvision()` before importing timm or open_clip; it is a no-op when torch is missing or the real ops
exist.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_PATCHED = False


def _load_extension(torch) -> bool:
    """Load torchvision's C++ extension the way torchvision does; False where it is missing or cannot load."""
    spec = importlib.util.find_spec("torchvision")
    folders = (spec.submodule_search_locations or []) if spec else []
    loaded = False
    for lib in sorted(lib for folder in folders for lib in Path(folder).glob("_C*.so")):  # _C.so; _C_stable.so (0.29+)
        try:
            torch.ops.load_library(str(lib))
            loaded = True
        except OSError:  # built against another torch (undefined symbols, missing CUDA libraries)
            pass
    return loaded


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
    if _load_extension(torch):
        return
    lib = torch.library.Library("torchvision", "DEF")  # kept alive through the module global below
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    globals()["_TORCHVISION_LIB"] = lib
