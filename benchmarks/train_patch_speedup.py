"""Training throughput on kept patches (r = 0.5) vs full images (r = 1.0): same model, same data, one run.

    python benchmarks/train_patch_speedup.py [--arch clip_s16] [--samples 64] [--batch-size 32] [--steps 6]

1. writes a synthetic corpus and governs it with the real pipeline (vision: test_vit, random weights, the model's
   image size, ratio 0.5) — the patch scores do not matter for speed, the geometry does;
2. builds the trainer's DeepSpeed engine (`djray.train.loop.build_engine`: CLIP, fused AdamW, warmup/cosine,
   ZeRO-0 by default, fp32, in process) and two of the trainer's data loaders on that output — `patches.mode: kept`
   (the governed r = 0.5 patches) and `full` (r = 1.0, every patch) — reading the same rows;
3. alternates training steps kept / full / kept / … (so both modes see the same machine load: the project machine
   is shared) and times each step from fetching its batch to the end of the optimizer step;
4. prints median samples/s per mode after `--skip` warm-up pairs, by wall clock and by this process's CPU time, and
   the wall-clock ratio (target ≥ 1.7).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def govern(root: Path, samples: int, image_size: int) -> Path:
    from djray import pipeline
    from djray.config import parse_config
    from djray.sample_data import write_sample_corpus

    write_sample_corpus(str(root / "corpus"), samples, 4, "webdataset", seed=1)
    manifest = pipeline.run(parse_config({
        "input": {"path": str(root / "corpus"), "format": "webdataset", "rows_per_block": 32},
        "output": {"path": str(root / "governed")},
        "vision": {"model": "test_vit", "weights": "random", "image_size": image_size, "ratio": 0.5,
                   "batch_size": 32, "precision": "fp32"},
    }), progress=False, log=lambda m: None)
    print(f"governed {manifest['rows_kept']} rows at image_size {image_size}", file=sys.stderr)
    return root / "governed"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="clip_s16")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=6, help="steps per mode")
    p.add_argument("--skip", type=int, default=2, help="warm-up steps per mode left out of the medians")
    p.add_argument("--zero-stage", type=int, default=0, choices=(0, 1, 2, 3),
                   help="0 by default: with one process ZeRO partitions nothing and only adds copies")
    p.add_argument("--decode-threads", type=int, default=1)
    args = p.parse_args()

    from djray._compat import patch_torchvision

    patch_torchvision()
    import torch

    from djray.train.config import parse_train_config
    from djray.train.batches import BatchBuilder, BatchLoader
    from djray.train.data import inspect_data, open_stream
    from djray.train.loop import _tokenizer, build_engine, setup_deepspeed

    with tempfile.TemporaryDirectory(prefix="djray-train-bench-") as tmp:
        root = Path(tmp)
        from djray.train.archs import ARCHS

        governed = govern(root, args.samples, ARCHS[args.arch].image_size)
        raw = {"data": {"path": str(governed), "num_workers": args.decode_threads},
               "model": {"arch": args.arch},
               "train": {"batch_size": args.batch_size, "steps": 2 * args.steps, "lr": 5e-4},
               "deepspeed": {"zero_stage": args.zero_stage}, "output": {"path": str(root / "out")}}
        deepspeed, _, world, local_rank = setup_deepspeed("cpu")
        cfgs = {m: parse_train_config({**raw, "patches": {"mode": m}}) for m in ("kept", "full")}
        engine, _ = build_engine(deepspeed, cfgs["kept"], 2 * args.steps, world, local_rank)
        tokenize = _tokenizer(77)
        pool = ThreadPoolExecutor(args.decode_threads) if args.decode_threads > 0 else None
        loaders = {}
        for mode, cfg in cfgs.items():
            plan = inspect_data(cfg, cfg.model.resolved())
            loaders[mode] = BatchLoader(open_stream(cfg, plan, 0, 1), BatchBuilder(cfg, plan, tokenize, pool),
                                        args.batch_size, prefetch=2)
        wall: dict[str, list[float]] = {"kept": [], "full": []}
        cpu: dict[str, list[float]] = {"kept": [], "full": []}
        tokens = {}
        t_start = time.perf_counter()
        try:
            for i in range(args.steps):
                for mode in (("kept", "full") if i % 2 == 0 else ("full", "kept")):
                    t0, c0 = time.perf_counter(), time.process_time()
                    batch, _ = loaders[mode].next()
                    keep = torch.from_numpy(batch.keep_idx) if batch.keep_idx is not None else None
                    loss = engine(torch.from_numpy(batch.pixels), torch.from_numpy(batch.tokens), keep)
                    engine.backward(loss)
                    engine.step()
                    float(loss.detach())
                    wall[mode].append(time.perf_counter() - t0)
                    cpu[mode].append(time.process_time() - c0)
                    tokens[mode] = 1 + (keep.shape[1] if keep is not None else engine.module.visual.num_patches)
        finally:
            for loader in loaders.values():
                loader.close()
            if pool is not None:
                pool.shutdown()
        elapsed = time.perf_counter() - t_start

    def rate(xs: list[float]) -> float:
        return args.batch_size / statistics.median(xs[args.skip:])

    kept, full = rate(wall["kept"]), rate(wall["full"])
    print(f"{args.arch}, batch {args.batch_size}, {args.steps} steps per mode alternating (first {args.skip} not "
          f"timed), {torch.get_num_threads()} torch threads, DeepSpeed ZeRO-{args.zero_stage} fp32 on CPU, "
          f"{elapsed:.0f}s of training")
    for mode, r in (("kept", 0.5), ("full", 1.0)):
        print(f"  r = {r} ({mode}, {tokens[mode]} image tokens): {rate(wall[mode]):7.2f} samples/s wall  "
              f"{rate(cpu[mode]):7.2f} samples per CPU-second  {rate(wall[mode]) * tokens[mode]:8.0f} image tokens/s")
    print(f"  speedup r=0.5 / r=1.0: {kept / full:.2f}x wall, {rate(cpu['kept']) / rate(cpu['full']):.2f}x CPU time  "
          "(target >= 1.7)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
