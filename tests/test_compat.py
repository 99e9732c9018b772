"""_compat.patch_torchvision: timm, open_clip and torchvision import beside any torch build, and nothing is defined
twice (torch aborts the whole process on a duplicate operator definition, so each case runs in its own process)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch")
if importlib.util.find_spec("torchvision") is None:  # not imported here: that import is what the patch makes work
    pytest.skip("torchvision is not installed", allow_module_level=True)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)


def _with_torchvision_folder(folder, code: str) -> subprocess.CompletedProcess:
    """Run `code` where torchvision's package folder is `folder` (what the patch looks in for the extension)."""
    return _run(textwrap.dedent(f"""
        import importlib.util, pathlib, types
        import torch
        folder = pathlib.Path({str(folder)!r})
        real = importlib.util.find_spec
        fake = types.SimpleNamespace(submodule_search_locations=[str(folder)])
        importlib.util.find_spec = lambda name, *a: fake if name == "torchvision" else real(name, *a)
    """) + textwrap.dedent(code))


def test_timm_open_clip_and_torchvision_import_after_the_patch():
    # This environment's own pair: a CPU torch beside PyPI's torchvision (the schemas are defined here), or one build
    # of both (the real extension is loaded here and torchvision finds its ops registered).
    out = _run("""
        from djray._compat import patch_torchvision
        patch_torchvision()
        import open_clip, timm, torch, torchvision
        print(torch.ops.torchvision.nms is not None, flush=True)
    """)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "True"


def test_an_extension_that_loads_is_loaded_instead_of_defining_schemas(tmp_path):
    # A stand-in extension that loads and registers its own nms (as a working torchvision's does): the patch must load
    # it and define nothing, or the process aborts on the duplicate definition.
    (tmp_path / "_C_stable.so").write_bytes(b"")
    out = _with_torchvision_folder(tmp_path, """
        loaded = []
        torch.ops.load_library = lambda path: loaded.append(pathlib.Path(path).name) or _register()
        def _register():
            global LIB
            LIB = torch.library.Library("torchvision", "DEF")
            LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        from djray import _compat
        _compat.patch_torchvision()
        print(loaded, "_TORCHVISION_LIB" in vars(_compat), flush=True)
    """)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "['_C_stable.so'] False"


def test_an_extension_that_cannot_load_gets_the_schemas(tmp_path):
    (tmp_path / "_C.so").write_bytes(b"not a shared library")
    out = _with_torchvision_folder(tmp_path, """
        from djray import _compat
        _compat.patch_torchvision()
        print("_TORCHVISION_LIB" in vars(_compat), torch.ops.torchvision.nms is not None, flush=True)
    """)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "True True"
