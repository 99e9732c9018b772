"""Tiny corpus writer shared by the benchmarks: caption-only samples with a small valid JPEG each."""

from __future__ import annotations

import io
import os
import tarfile

from PIL import Image


def write_caption_shards(out: str, captions: list[str], shards: int = 2) -> None:
    os.makedirs(out, exist_ok=True)
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 80, 40)).save(buf, "JPEG")
    jpg = buf.getvalue()
    per = -(-len(captions) // shards)
    for s in range(shards):
        with tarfile.open(os.path.join(out, f"{s:05d}.tar"), "w") as tf:
            for i, cap in enumerate(captions[s * per:(s + 1) * per]):
                for ext, data in (("jpg", jpg), ("txt", cap.encode())):
                    info = tarfile.TarInfo(f"{s:05d}{i:04d}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))


def read_tar_samples(shard) -> dict[str, dict[str, bytes]]:
    """A WebDataset tar's samples in file order, {key: {extension: bytes}} (what the bare loops read)."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(shard, "r|") as tar:
        for m in tar:
            key, _, ext = m.name.partition(".")
            samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples
