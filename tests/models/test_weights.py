"""Weight sources: syntax, pre-flight checks, loading and checksums (S3 against moto is tested elsewhere)."""

from __future__ import annotations

import argparse
import hashlib
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from djray._compat import patch_torchvision
from djray.models import weights as W

patch_torchvision()
torch = pytest.importorskip("torch")


@pytest.mark.parametrize(
    "s,kind,loc",
    [("hub", "hub", ""), ("hub:openai", "hub", "openai"), ("random", "random", ""),
     ("file:/a/b.pth", "file", "/a/b.pth"), ("file:///a/b.pth", "file", "/a/b.pth"),
     ("s3://bucket/k/w.safetensors", "s3", "s3://bucket/k/w.safetensors")],
)
def test_parse_source(s, kind, loc):
    src = W.parse_source(s)
    assert (src.kind, src.location) == (kind, loc)
    assert W.parse_source(str(src)) == src


@pytest.mark.parametrize("s", ["", "huggingface", "file:", "s3://bucket", "s3://bucket/", "http://x/y.pth", "hub:"])
def test_parse_source_rejects(s):
    with pytest.raises(ValueError):
        W.parse_source(s)


def test_check_source_file(tmp_path):
    good = tmp_path / "w.pth"
    torch.save({"a": torch.zeros(2)}, good)
    assert W.check_source(f"file:{good}").kind == "file"
    with pytest.raises(ValueError, match="file not found: .*missing.pth"):
        W.check_source(f"file:{tmp_path / 'missing.pth'}")
    with pytest.raises(ValueError, match="not a regular file"):
        W.check_source(f"file:{tmp_path}")
    txt = tmp_path / "w.txt"
    txt.write_text("x")
    with pytest.raises(ValueError, match="unsupported weights file type"):
        W.check_source(f"file:{txt}")
    if os.geteuid() != 0:
        good.chmod(0)
        with pytest.raises(ValueError, match="not readable"):
            W.check_source(f"file:{good}")
    assert W.check_source("hub").kind == "hub"  # offline: syntax only
    assert W.check_source("random").kind == "random"


def test_load_state_dict_safetensors_and_pth(tmp_path):
    from safetensors.torch import save_file

    sd = {"x": torch.arange(6, dtype=torch.float32).reshape(2, 3), "y": torch.ones(4, dtype=torch.bfloat16)}
    save_file(sd, str(tmp_path / "w.safetensors"))
    torch.save(sd, tmp_path / "w.pth")
    torch.save({"teacher": sd, "epoch": 3, "args": argparse.Namespace(arch="vit_small")}, tmp_path / "full.pt")
    for name in ("w.safetensors", "w.pth"):
        got = W.load_state_dict(str(tmp_path / name))
        assert set(got) == {"x", "y"} and all(torch.equal(got[k], sd[k]) for k in sd)
    full = W.load_state_dict(str(tmp_path / "full.pt"))  # DINO full checkpoints pickle their argparse args
    assert torch.equal(full["teacher"]["x"], sd["x"]) and full["args"].arch == "vit_small"


class Evil:  # an arbitrary pickled object: torch.load(weights_only=True) must refuse it
    pass


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_load_state_dict_garbage_is_value_error(tmp_path):
    rng = np.random.default_rng(0)
    blobs = [rng.bytes(256) for _ in range(200)]
    blobs += [b"", b"\xa1\x00garbage", b"PK\x03\x04broken zip", b"\x80\x02}q\x00."]
    for suffix in (".pth", ".safetensors", ".pt"):
        for i, blob in enumerate(blobs):
            path = tmp_path / f"g{i}{suffix}"
            path.write_bytes(blob)
            with pytest.raises(ValueError) as e:
                W.load_state_dict(str(path))
            assert "not a readable weights file" in str(e.value) or "expected a state dict" in str(e.value)
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(ValueError, match="expected a state dict"):
        W.load_state_dict(str(tmp_path / "tensor.pth"))
    torch.save({"m": Evil()}, tmp_path / "pickle.pth")
    with pytest.raises(ValueError, match="not a readable weights file"):  # weights_only refuses arbitrary objects
        W.load_state_dict(str(tmp_path / "pickle.pth"))
    with pytest.raises(ValueError, match="file not found"):
        W.load_state_dict(str(tmp_path / "nope.pth"))


def test_sha256_and_fetch_file(tmp_path):
    p = tmp_path / "w.bin"
    data = os.urandom(1 << 20)
    p.write_bytes(data)
    assert W.sha256_file(str(p)) == hashlib.sha256(data).hexdigest()
    assert W.fetch(f"file:{p}") == str(p)
    with pytest.raises(ValueError, match="file not found"):
        W.fetch(f"file:{tmp_path / 'gone.pth'}")
    with pytest.raises(ValueError, match="file: or s3://"):
        W.fetch("random")


def test_state_sha256_sensitive_to_values_and_names():
    a = {"w": torch.zeros(3), "b": torch.ones(2, dtype=torch.bfloat16)}
    h = W.state_sha256(a)
    assert h == W.state_sha256({k: v.clone() for k, v in a.items()})
    assert h != W.state_sha256({"w": torch.tensor([0.0, 0.0, 1e-7]), "b": a["b"]})
    assert h != W.state_sha256({"v": a["w"], "b": a["b"]})
