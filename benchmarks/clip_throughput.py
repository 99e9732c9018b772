"""The CLIP stage on CPUs: its cost next to DINO in phase A, one fused actor vs two pools, and the clip_score path end
to end against a bare single-process loop.

1. Phase A img/s (rows / the `stream_s` phase of `pipeline.run`) on the same corpus and CPUs: DINO ViT-S/16 alone;
   DINO + CLIP ViT-B/16 in one fused actor pool (equal resources); DINO + CLIP in two pools (resources differ).
   Random weights, fp32, 2 actors per pool shape.
2. The clip_score path, whole processes: `python -m djray run` (read → decode → CLIP image + text → clip_score →
   exact top 50 % → write; Ray start-up included) vs a fresh Python process doing decode + the same CLIP forward at
   batch 10 + cosine + the same top 50 % + one Parquet file per shard. djray gets only the CLIP model settings
   (model, weights, precision, batch size): blocks, actors and threads are the runtime's defaults. Ratio = bare wall
   / djray wall (≥ 1.0: djray is as fast as the loop).

peak_rss_mb: the largest Ray worker process (sampled every 0.1 s); the bare loop's own peak RSS is printed next to it.

    python benchmarks/clip_throughput.py [--stage-samples 300] [--e2e-samples 200,600] [--cpus 2] [--skip-stage]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from bench_corpus import read_tar_samples  # noqa: E402
from probes import WorkerRss  # noqa: E402

BATCH = 10
DINO = {"model": "vit_small_patch16_224.dino", "weights": "random", "precision": "fp32", "batch_size": BATCH}
CLIP = {"model": "ViT-B-16", "weights": "random", "precision": "fp32", "batch_size": BATCH}


def bare_loop(corpus: Path, out: Path, fraction: float) -> dict:
    """decode + canonical crop → CLIP encode_image / encode_text at batch 10 → cosine → exact top fraction → write."""
    t0 = time.perf_counter()
    import torch

    from djray.geometry import ImageRejected, canonical_crop, open_image
    from djray.models.clip import build_clip

    model, desc = build_clip("ViT-B-16", "random")
    import open_clip

    tok = open_clip.get_tokenizer("ViT-B-16")
    mean = torch.tensor(desc["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(desc["std"]).view(1, 3, 1, 1)
    setup = time.perf_counter() - t0
    rows: list[dict] = []
    for shard in sorted(corpus.glob("*.tar")):
        samples = read_tar_samples(shard)
        good = []
        for index, (key, v) in enumerate(samples.items()):
            image = v.get("jpg") or v.get("png") or v.get("webp")
            caption = v.get("txt", b"").decode("utf-8", errors="replace")
            try:
                img = open_image(image or b"", 89_478_485)
            except ImageRejected:
                continue
            if min(img.size) >= 32 and caption.strip():
                good.append((key, index, image, caption, canonical_crop(img, 224)))
        for s in range(0, len(good), BATCH):
            chunk = good[s:s + BATCH]
            x = torch.from_numpy(np.stack([c[4] for c in chunk])).permute(0, 3, 1, 2).float().div_(255.0)
            with torch.inference_mode():
                e = model.encode_image((x - mean) / std, normalize=True)
                t = model.encode_text(tok([c[3] for c in chunk]), normalize=True)
            score = (e * t).sum(dim=1).numpy()
            rows += [{"key": c[0], "src_shard": shard.name, "src_index": c[1], "image": c[2], "caption": c[3],
                      "clip_score": float(sc)} for c, sc in zip(chunk, score)]
    n = int(np.floor(fraction * len(rows) + 0.5))
    keep = sorted(range(len(rows)), key=lambda i: (-rows[i]["clip_score"], rows[i]["key"]))[:n]
    kept = [rows[i] for i in sorted(keep)]
    out.mkdir(parents=True, exist_ok=True)
    for shard in sorted({r["src_shard"] for r in kept}):
        table = pa.Table.from_pylist([r for r in kept if r["src_shard"] == shard])
        pq.write_table(table, out / f"{Path(shard).stem}.parquet",
                       compression={c: "none" if c == "image" else "zstd" for c in table.column_names})
    return {"rows": len(rows), "kept": len(kept), "setup_s": setup,
            "bare_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_stage(corpus: Path, out: Path, cpus: int, vision: dict, clip: dict | None) -> dict:
    from djray import pipeline
    from djray.config import parse_config

    shutil.rmtree(out, ignore_errors=True)
    raw = {"input": {"path": str(corpus), "format": "webdataset", "rows_per_block": BATCH},
           "output": {"path": str(out)}, "vision": {**DINO, "resources": vision}}
    if clip is not None:
        raw["clip"] = {**CLIP, "resources": clip}
    t0 = time.perf_counter()
    m = pipeline.run(parse_config(raw), progress=False, log=lambda s: None)
    return {"wall_s": time.perf_counter() - t0, "stream_s": m["run"]["phases_s"]["stream_s"], "rows": m["rows_in"]}


def run_e2e(corpus: Path, work: Path, cpus: int) -> dict:
    """`djray run` with only the CLIP section's model settings given: blocks, actors and threads are the runtime's
    defaults (what a user gets), the CLIP forward at batch 10 as in the bare loop. Peak RSS: the largest Ray worker."""
    work.mkdir(parents=True, exist_ok=True)
    cfg = work / "clip_score.yaml"
    cfg.write_text(json.dumps({
        "input": {"path": str(corpus), "format": "webdataset"},
        "output": {"path": str(work / "djray"), "mode": "overwrite"}, "ray": {"num_cpus": cpus},
        "clip": CLIP, "sieve": [{"op": "clip_score", "keep_fraction": 0.5}]}))
    t0 = time.perf_counter()
    with WorkerRss() as rss:
        subprocess.run([sys.executable, "-m", "djray", "run", str(cfg), "--no-progress"], check=True,
                       stdout=subprocess.DEVNULL, env={**os.environ, "RAY_ADDRESS": ""})
    djray = time.perf_counter() - t0
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--bare-child", str(corpus), str(work / "bare")], check=True,
                          capture_output=True, text=True)
    bare = time.perf_counter() - t0
    return {"djray_s": djray, "bare_s": bare, "djray_rss_mb": rss.peak / 1024,
            **json.loads(done.stdout.strip().splitlines()[-1])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage-samples", type=int, default=300)
    ap.add_argument("--e2e-samples", default="200,600")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--skip-stage", action="store_true", help="only the end-to-end comparison")
    ap.add_argument("--bare-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare_child:
        print(json.dumps(bare_loop(Path(args.bare_child[0]), Path(args.bare_child[1]), 0.5)))
        return 0
    from djray.sample_data import write_sample_corpus

    lines = []
    work = Path(tempfile.mkdtemp(prefix="clip-bench-"))
    if not args.skip_stage:
        corpus = work / f"corpus-{args.stage_samples}"
        write_sample_corpus(str(corpus), args.stage_samples, 4, "webdataset", seed=1)
        import ray

        ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR")
        two = {"num_cpus": 0.5, "pool_size": 2}  # 2 one-thread actors (the CPU demo's shape); two pools: 1 + 1
        shapes = {"dino_alone": (two, None), "dino_clip_fused": (two, two),
                  "dino_clip_two_pools": ({"num_cpus": 0.5, "pool_size": 1}, {"num_cpus": 0.49, "pool_size": 1})}
        stage = {}
        for name, (vision, clip) in shapes.items():
            with WorkerRss() as rss:
                r = stage[name] = run_stage(corpus, work / name, args.cpus, vision, clip)
            lines.append(f"BENCH name=phase_a_{name} rows={r['rows']} wall_s={r['wall_s']:.2f} "
                         f"peak_rss_mb={rss.peak / 1024:.0f} "
                         f"stream_s={r['stream_s']:.2f} img_per_s={r['rows'] / r['stream_s']:.2f} cpus={args.cpus}")
            print(lines[-1].replace("BENCH ", "  "), flush=True)
        ray.shutdown()
        alone, fused, pools = (stage[k]["rows"] / stage[k]["stream_s"] for k in shapes)
        print(f"phase A img/s: DINO alone {alone:.2f}, DINO+CLIP fused {fused:.2f}, two pools {pools:.2f}; "
              f"fused/two pools {fused / pools:.2f}; CLIP adds {1 / fused - 1 / alone:.3f} s/img")
    for n in (int(s) for s in args.e2e_samples.split(",")):
        c = work / f"corpus-e2e-{n}"
        write_sample_corpus(str(c), n, 4, "webdataset", seed=2)
        r = run_e2e(c, work / f"e2e-{n}", args.cpus)
        ratio = r["bare_s"] / r["djray_s"]
        lines.append(f"BENCH name=clip_score_e2e rows={n} wall_s={r['djray_s']:.2f} "
                     f"peak_rss_mb={r['djray_rss_mb']:.0f} bare_s={r['bare_s']:.2f} "
                     f"bare_peak_rss_mb={r['bare_rss_mb']:.0f} ratio={ratio:.2f} bare_setup_s={r['setup_s']:.2f} "
                     f"cpus={args.cpus}")
        print(f"clip_score path, {n} images: djray {r['djray_s']:.1f}s, bare loop {r['bare_s']:.1f}s "
              f"(setup {r['setup_s']:.1f}s) -> ratio {ratio:.2f}", flush=True)
    print()
    print("\n".join(lines))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
