"""The vision stage on one accelerator, without Ray: decode (a thread pool) + the vision op, in one process.

Made to be carried to a GPU machine that has torch, timm and pyarrow (and Pillow, through torchvision) but no Ray:
it imports nothing of djray's runtime. On N synthetic JPEGs of realistic sizes (shorter side 256-1024 px, photo-like
content, quality 90) it prints, for each batch size (64-512), bf16 by default:

* decode per core — `open_image` + canonical crop (PIL, the production code) on one thread, and on `--workers`
  threads: the number docs/cluster.md turns into "cores per GPU" (plus, for comparison only, libjpeg's draft mode);
* model only — `DinoPatchScorer` (normalise, one DINO forward, patch scores, top-k, [CLS] embedding, columns) on
  crops already decoded, i.e. what one GPU sustains when decode keeps up;
* decode + model — the thread pool decodes the next batches while the op runs the current one.

If pydantic (the op's parameters) is missing it runs the op's model path itself (build_dino, forward_dino, mean_prob
scores, select_patches) and says so.

    python benchmarks/vision_gpu.py --device cuda [--n 8192] [--batch-sizes 64 128 256 512] [--workers 16]
    python benchmarks/vision_gpu.py --device cpu --n 64 --batch-sizes 16 32   # a check on a laptop
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL, IMAGE_SIZE = "vit_small_patch16_224.dino", 224


def synthetic_jpegs(n: int, seed: int = 0, unique: int = 48) -> list[bytes]:
    """`n` JPEGs cycling through `unique` distinct ones: random sizes (shorter side 256-1024, aspect 0.75-1.6),
    smooth colour fields plus fine noise, so the files are photo-sized (tens to hundreds of KB)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(min(n, unique)):
        short = int(rng.integers(256, 1025))
        long = int(short * rng.uniform(1.0, 1.6))
        w, h = (long, short) if rng.random() < 0.5 else (short, long)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = [np.sin(xx / rng.uniform(20, 200) + rng.uniform(0, 6)) * np.cos(yy / rng.uniform(20, 200))
                for _ in range(3)]
        img = (np.stack(base, -1) * 100 + 128 + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return [out[i % len(out)] for i in range(n)]


def decode(data: bytes) -> np.ndarray:
    from djray.geometry import canonical_crop, open_image

    return canonical_crop(open_image(data, 89_478_485), IMAGE_SIZE)


def decode_draft(data: bytes) -> np.ndarray:
    """NOT the production path: libjpeg's DCT-domain downscale (PIL `draft`, shorter side kept >= S) before the
    canonical crop. Faster on large JPEGs, but its pixels differ from the canonical crop's: measured here only to size
    what a draft-decode (or GPU-decode) option would change."""
    from PIL import Image

    from djray.geometry import canonical_crop

    img = Image.open(io.BytesIO(data))
    img.draft("RGB", (IMAGE_SIZE, IMAGE_SIZE))
    return canonical_crop(img.convert("RGB"), IMAGE_SIZE)


class VisionOp:
    """The production op when its parameters (pydantic) import; else the same model path, done here."""

    def __init__(self, device: str, precision: str, batch_size: int):
        from djray._compat import patch_torchvision

        patch_torchvision()
        try:
            from djray.ops.base import Resources
            from djray.ops.vision.dino_patch import DinoPatchScorer
            from djray.ops.vision.params import VisionParams
        except ImportError as e:
            self.kind, self.op = f"model path (no {e.name})", None
            self._build_model_path(device, precision)
        else:
            self.kind = "DinoPatchScorer"
            gpus = 1.0 if device == "cuda" else 0.0
            self.op = DinoPatchScorer(VisionParams(model=MODEL, weights="random", image_size=IMAGE_SIZE,
                                                   precision=precision, batch_size=batch_size),
                                      Resources(num_cpus=1, num_gpus=gpus, pool_size=1, batch_size=batch_size))
            self.op.setup()

    def _build_model_path(self, device: str, precision: str) -> None:
        import torch

        from djray.models.dino import build_dino

        self.torch, self.device, self.precision = torch, device, precision
        self.model, desc = build_dino(MODEL, "random", IMAGE_SIZE, device=device)
        self.mean = torch.tensor(desc["mean"], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(desc["std"], device=device).view(1, 3, 1, 1)

    def __call__(self, crops: np.ndarray) -> int:
        if self.op is not None:
            return self._op_call(crops)
        from djray.models.dino import forward_dino
        from djray.patches import select_patches

        torch = self.torch
        u8 = torch.from_numpy(crops).to(self.device, non_blocking=True)
        x = (u8.permute(0, 3, 1, 2).float().div_(255.0) - self.mean) / self.std
        out = forward_dino(self.model, x, precision=self.precision)
        probs = torch.softmax(out.cls_logits.float(), dim=-1)[:, :, out.num_prefix_tokens:].mean(dim=1)
        scores, _ = probs.cpu().numpy(), out.embedding.float().cpu().numpy()
        for i, s in enumerate(scores):
            select_patches(s, 0.5, "topk", 0, str(i))
        return len(crops)

    def _op_call(self, crops: np.ndarray) -> int:
        import pyarrow as pa

        from djray import schema as S

        n = len(crops)
        flat = pa.py_buffer(np.ascontiguousarray(crops).reshape(-1))
        pixels = pa.Array.from_buffers(pa.binary(IMAGE_SIZE * IMAGE_SIZE * 3), n, [None, flat])
        batch = pa.table({S.PIXELS: pixels, S.KEY: [str(i) for i in range(n)], S.SRC_SHARD: ["s"] * n,
                          S.SRC_INDEX: pa.array(range(n), pa.int64()),
                          S.REJECT_REASON: pa.array([None] * n, pa.string())})
        self.op(batch)
        return n


def bench(name: str, rows: int, wall: float, **kv) -> None:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    extra = " ".join(f"{k}={v}" for k, v in kv.items())
    print(f"BENCH name={name} rows={rows} wall_s={wall:.3f} peak_rss_mb={rss:.0f} img_s={rows / wall:.1f} {extra}",
          flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], required=True)
    ap.add_argument("--n", type=int, default=8192, help="images per measurement")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--precision", choices=["bf16", "fp32", "fp16"], default="bf16")
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="decode threads")
    args = ap.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    where = torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    jpegs = synthetic_jpegs(args.n)
    kb = np.mean([len(j) for j in jpegs]) / 1024
    print(f"{args.n} JPEGs ({kb:.0f} KB mean, shorter side 256-1024 px); {MODEL} {IMAGE_SIZE}px random weights, "
          f"{args.precision}; {where}; {os.cpu_count()} CPUs, {args.workers} decode threads", flush=True)

    one = jpegs[: max(8, min(len(jpegs), 64))]
    t0 = time.perf_counter()
    for j in one:
        decode(j)
    per_core = len(one) / (time.perf_counter() - t0)
    bench("decode_1_thread", len(one), len(one) / per_core, per_core_img_s=f"{per_core:.1f}")
    t0 = time.perf_counter()
    for j in one:
        decode_draft(j)
    bench("decode_draft_1_thread", len(one), time.perf_counter() - t0, production="no")
    with ThreadPoolExecutor(args.workers) as pool:
        t0 = time.perf_counter()
        crops = np.stack(list(pool.map(decode, jpegs)))
        wall = time.perf_counter() - t0
    bench(f"decode_{args.workers}_threads", len(jpegs), wall)

    for b in args.batch_sizes:
        op = VisionOp(args.device, args.precision, b)
        op(crops[:b])  # warm-up (cuDNN / kernels)
        t0 = time.perf_counter()
        done = sum(op(crops[i:i + b]) for i in range(0, len(crops) - b + 1, b))
        bench(f"model_only_b{b}", done, time.perf_counter() - t0, device=args.device, op=op.kind.replace(" ", "_"))
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.workers) as pool:
            batches = [jpegs[i:i + b] for i in range(0, len(jpegs) - b + 1, b)]
            pending = [pool.submit(lambda c: np.stack([decode(j) for j in c]), c) for c in batches[:2]]
            done, k = 0, 2
            while pending:
                x = pending.pop(0).result()
                if k < len(batches):
                    pending.append(pool.submit(lambda c: np.stack(list(map(decode, c))), batches[k]))
                    k += 1
                done += op(x)
        bench(f"decode_model_b{b}", done, time.perf_counter() - t0, device=args.device)
        del op
    return 0


if __name__ == "__main__":
    sys.exit(main())
