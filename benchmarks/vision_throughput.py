"""Throughput of read → decode → vision → write: the op alone, a bare one-process loop, and `djray run`.

Printed in one run, in the precision asked (`auto` by default: what djray chooses on this machine) and in fp32
(ViT-S/16 DINO architecture, random weights, 224 px, batch 64):

* op in-process — `DinoPatchScorer` (forward + scores + top-k + columns) on ready-made canonical crops, torch's
  default threads, no decode and no I/O: the ceiling of the vision stage on this machine; once with glibc's default
  allocator, once in a child process started with the tunables djray's CPU model actors get (runtime/malloc.py);
* bare loop — a fresh Python process doing what a hand-written script would: read each tar, decode with PIL
  (`open_image`, the same checks), caption/min-side policy, canonical crop, one `forward_dino` per 64 crops, head
  aggregation, `select_patches`, one Parquet file per shard; timed from spawn to exit (its own imports and model
  build included), and its loop alone (start-up removed); glibc's default allocator, as a hand-written script runs,
  and with `--bare-tuned-sizes` once more with djray's actor tunables (what the same script gains from them);
* djray whole run — `python -m djray run job.yaml` with the vision section at its defaults (`weights: random`,
  `precision` as asked, `auto` by default, everything else left out: resources resolved by the runtime), timed from
  launch to exit: Ray start, actor start, every phase, the manifest and Ray's shutdown are inside;
* djray steady state — rows / (end of phase A − the moment the last vision actor was ready), from file times
  (the actors' model record, the sealed signals files); and, with two sizes, the marginal rate
  (rows2 − rows1) / (wall2 − wall1) of whole runs, for djray and the bare loop alike (fixed costs cancel).

One `BENCH` line per measurement; ratios djray / bare are printed at the end. Run on a quiet machine:

    flock -x /tmp/djray-cpu.lock python benchmarks/vision_throughput.py [--precision auto|bf16|fp32] [--sizes 1200 5000]
        [--fp32-sizes 1200] [--bare-tuned-sizes 1200]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODEL, IMAGE_SIZE, BATCH = "vit_small_patch16_224.dino", 224, 64


def _read_tar(shard: Path) -> list[tuple[str, bytes | None, str]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(shard, "r|") as tar:
        for m in tar:
            key, _, ext = m.name.partition(".")
            samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return [(k, v.get("jpg") or v.get("png") or v.get("webp"), v.get("txt", b"").decode("utf-8", errors="replace"))
            for k, v in samples.items()]


def bare_loop(corpus: Path, out: Path, model_name: str, image_size: int, precision: str, batch_size: int,
              ratio: float, max_pixels: int = 89_478_485, min_side: int = 32) -> tuple[int, int, dict[str, float]]:
    """The hand-written single-process equivalent. Returns (rows read, rows scored, seconds per part)."""
    t: dict[str, float] = dict.fromkeys(("imports", "model", "read", "decode", "forward", "post", "write"), 0.0)
    t0 = time.perf_counter()
    import torch

    from djray._compat import patch_torchvision
    from djray.geometry import ImageRejected, canonical_crop, open_image
    from djray.models.dino import build_dino, forward_dino
    from djray.ops.vision.dino_patch import aggregate_heads
    from djray.patches import select_patches

    patch_torchvision()
    import timm  # noqa: F401 - timed here with the other imports (build_dino would import it lazily)

    t["imports"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    model, desc = build_dino(model_name, "random", image_size)
    mean = torch.tensor(desc["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(desc["std"]).view(1, 3, 1, 1)
    t["model"] = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    rows = scored = 0
    for shard in sorted(corpus.glob("*.tar")):
        t0 = time.perf_counter()
        samples = _read_tar(shard)
        t["read"] += time.perf_counter() - t0
        kept: list[dict] = []
        crops: list[np.ndarray] = []
        for index, (key, image, caption) in enumerate(samples):
            rows += 1
            t0 = time.perf_counter()
            try:
                img = open_image(image or b"", max_pixels)
            except ImageRejected:
                img = None
            ok = img is not None and min(img.size) >= min_side and caption.strip()
            if ok:
                crops.append(canonical_crop(img, image_size))
                kept.append({"key": key, "src_shard": shard.name, "src_index": index, "image": image,
                             "img_width": img.width, "img_height": img.height, "caption": caption})
            t["decode"] += time.perf_counter() - t0
        for start in range(0, len(crops), batch_size):
            t0 = time.perf_counter()
            u8 = torch.from_numpy(np.stack(crops[start:start + batch_size]))
            x = (u8.permute(0, 3, 1, 2).float().div_(255.0) - mean) / std
            o = forward_dino(model, x, precision=precision)
            scores = aggregate_heads(o.cls_logits, o.num_prefix_tokens, "mean_prob").numpy()
            emb = o.embedding.float().numpy()
            t1 = time.perf_counter()
            t["forward"] += t1 - t0
            for j, row in enumerate(kept[start:start + batch_size]):
                row["patch_scores"] = scores[j].astype(np.float32)
                row["patch_idx"] = select_patches(scores[j], ratio, "topk", 0, row["key"])
                row["vis_embedding"] = emb[j].astype(np.float32)
            t["post"] += time.perf_counter() - t1
            scored += len(u8)
        t0 = time.perf_counter()
        table = pa.Table.from_pylist(kept)
        codecs = {name: "none" if name == "image" else "zstd" for name in table.column_names}  # as djray writes
        pq.write_table(table, out / f"{shard.stem}.parquet", compression=codecs, row_group_size=1024)
        t["write"] += time.perf_counter() - t0
    return rows, scored, t


def _child_env(tunables: str | None) -> dict[str, str]:
    """This environment, with GLIBC_TUNABLES set to `tunables` (None: glibc's defaults)."""
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    return {**env, "GLIBC_TUNABLES": tunables} if tunables else env


def run_bare(corpus: Path, out: Path, args: argparse.Namespace, batch: int, tunables: str | None = None) -> dict:
    """The bare loop in a fresh interpreter, timed from spawn to exit (start-up included)."""
    spec = {"corpus": str(corpus), "out": str(out), "model": args.model, "image_size": args.image_size,
            "precision": args.precision, "batch": batch}
    before = os.times()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--bare-child", json.dumps(spec)], capture_output=True,
                          text=True, check=True, env=_child_env(tunables))
    wall = time.perf_counter() - t0
    after = os.times()
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    result["cpu_s"] = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return result


def loop_seconds(bare: dict) -> float:
    """The bare loop's own seconds: its parts less the start-up (imports, model build)."""
    return sum(v for k, v in bare["parts"].items() if k not in ("imports", "model"))


def bare_child(spec_json: str) -> int:
    spec = json.loads(spec_json)
    rows, scored, parts = bare_loop(Path(spec["corpus"]), Path(spec["out"]), spec["model"], spec["image_size"],
                                    spec["precision"], spec["batch"], 0.5)
    print(json.dumps({"rows": rows, "scored": scored, "parts": parts}))
    return 0


def _child_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def bench(name: str, rows: int, wall: float, rss: float, **kv) -> None:
    extra = " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in kv.items())
    print(f"BENCH name={name} rows={rows} wall_s={wall:.2f} peak_rss_mb={rss:.0f} img_s={rows / wall:.1f} "
          f"load_avg={os.getloadavg()[0]:.2f} {extra}".rstrip(), flush=True)


def op_in_process(corpus: Path, precision: str, n: int = 256, name: str = "") -> float:
    """img/s of the vision op alone on `n` canonical crops (two timed passes after a warm-up batch)."""
    from djray import schema as S
    from djray._compat import patch_torchvision
    from djray.geometry import canonical_crop, open_image
    from djray.ops.vision.dino_patch import DinoPatchScorer
    from djray.ops.vision.params import VisionParams

    patch_torchvision()
    crops, keys = [], []
    for shard in sorted(corpus.glob("*.tar")):
        for key, image, _ in _read_tar(shard):
            try:
                img = open_image(image or b"", 89_478_485)
            except Exception:  # noqa: BLE001 - the corpus's bad rows: not part of this measurement
                continue
            if min(img.size) >= 32:
                crops.append(canonical_crop(img, IMAGE_SIZE).tobytes())
                keys.append(key)
            if len(crops) == n:
                break
        if len(crops) == n:
            break
    m = len(crops)
    batch = pa.table({S.PIXELS: pa.array(crops, pa.binary(IMAGE_SIZE * IMAGE_SIZE * 3)), S.KEY: keys,
                      S.SRC_SHARD: ["s"] * m, S.SRC_INDEX: pa.array(range(m), pa.int64()),
                      S.REJECT_REASON: pa.array([None] * m, pa.string())})
    op = DinoPatchScorer(VisionParams(model=MODEL, weights="random", image_size=IMAGE_SIZE, precision=precision,
                                      batch_size=BATCH))
    op.setup()
    op(batch.slice(0, BATCH))
    t0 = time.perf_counter()
    for _ in range(2):
        op(batch)
    wall = time.perf_counter() - t0
    bench(name or f"op_inprocess_{precision}", 2 * m, wall, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
          threads=op.describe()["threads"], malloc="actor" if os.environ.get("GLIBC_TUNABLES") else "default")
    return 2 * m / wall


def op_rates(corpus: Path, precision: str) -> tuple[float, float]:
    """img/s of the op alone with glibc's default allocator and with the actors' tunables."""
    return op_in_process(corpus, precision), op_with_actor_malloc(corpus, precision)


def op_with_actor_malloc(corpus: Path, precision: str) -> float:
    """`op_in_process` in a child process started with the allocator tunables of djray's CPU model actors."""
    from djray.runtime.malloc import CPU_ACTOR_TUNABLES

    spec = json.dumps({"corpus": str(corpus), "precision": precision})
    proc = subprocess.run([sys.executable, __file__, "--op-child", spec], capture_output=True, text=True, check=True,
                          env=_child_env(CPU_ACTOR_TUNABLES))
    lines = proc.stdout.strip().splitlines()
    print(lines[-2], flush=True)  # the child's BENCH line
    return float(lines[-1])


def op_child(spec_json: str) -> int:
    spec = json.loads(spec_json)
    print(op_in_process(Path(spec["corpus"]), spec["precision"], name=f"op_inprocess_{spec['precision']}_actor_malloc"))
    return 0


def run_djray(corpus: Path, out: Path, precision: str) -> dict:
    """`python -m djray run` from launch to exit on a job with the vision section at its defaults."""
    import shutil

    import yaml

    shutil.rmtree(out, ignore_errors=True)
    job = out.parent / f"{out.name}.yaml"
    job.write_text(yaml.safe_dump({"input": {"path": str(corpus), "format": "webdataset"},
                                   "output": {"path": str(out)},
                                   "vision": {"model": MODEL, "weights": "random", "precision": precision}}))
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t_spawn = time.time()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "djray", "run", str(job), "--no-progress"], env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"djray run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    record = out / "_djray" / "models" / "dino_patch.json"
    ready = record.stat().st_mtime - t_spawn
    signals_end = max(f.stat().st_mtime for f in (out / "signals").rglob("*.parquet")) - t_spawn
    notes = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("vision:")]
    return {"wall_s": wall, "ready_s": ready, "signals_end_s": signals_end, "manifest": manifest,
            "model": json.loads(record.read_text()), "notes": notes, "rss": _child_rss_mb()}


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--bare-child":
        return bare_child(sys.argv[2])
    if len(sys.argv) == 3 and sys.argv[1] == "--op-child":
        return op_child(sys.argv[2])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                    help="precision of the --sizes runs (auto, djray's default: the bare loop and the op in-process "
                         "run what djray chose)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1200, 5000], help="images per corpus")
    ap.add_argument("--fp32-sizes", type=int, nargs="*", default=None, help="sizes run in fp32 (default: smallest)")
    ap.add_argument("--bare-tuned-sizes", type=int, nargs="*", default=[],
                    help="sizes whose bare loop runs once more with djray's actor allocator tunables")
    ap.add_argument("--shard-rows", type=int, default=200, help="images per input shard")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    fp32_sizes = args.fp32_sizes if args.fp32_sizes is not None else [min(args.sizes)]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="djray-vbench-"))
    from djray.models.precision import BF16_INSTRUCTION_FLAGS, NATIVE_BF16_FLAGS, cpu_flags
    from djray.runtime.malloc import CPU_ACTOR_TUNABLES
    from djray.sample_data import write_sample_corpus

    corpora = {}
    for n in sorted(set(args.sizes) | set(fp32_sizes)):
        corpora[n] = work / f"corpus-{n}"
        if not corpora[n].exists():
            write_sample_corpus(str(corpora[n]), n, max(1, n // args.shard_rows), "webdataset", seed=0)
    flags = sorted(cpu_flags() & {*NATIVE_BF16_FLAGS, *BF16_INSTRUCTION_FLAGS, "avx512f", "avx2"})
    print(f"{os.cpu_count()} CPUs ({', '.join(flags)}); {MODEL} {IMAGE_SIZE}px random weights, batch {BATCH}; "
          f"{args.shard_rows} images per shard; load avg {os.getloadavg()}", flush=True)
    ratios: list[str] = []
    for requested, sizes in ((args.precision, args.sizes), ("fp32", fp32_sizes)):
        if not sizes:
            continue
        op_rate, actor_rate = (None, None) if requested == "auto" else op_rates(corpora[min(sizes)], requested)
        whole: dict[str, dict[int, float]] = {"bare": {}, "djray": {}}
        for n in sizes:
            run = run_djray(corpora[n], work / "djray-out", requested)
            chosen = run["model"]["precision"]["chosen"]  # the bare loop runs what djray ran (auto: its choice)
            if op_rate is None:
                op_rate, actor_rate = op_rates(corpora[min(sizes)], chosen)
                other = "fp32" if chosen == "bf16" else "bf16"
                op_in_process(corpora[min(sizes)], other, n=64)  # what auto did not choose, for the record
            ns = argparse.Namespace(model=MODEL, image_size=IMAGE_SIZE, precision=chosen)
            bare = run_bare(corpora[n], work / "bare", ns, BATCH)
            loop_s = loop_seconds(bare)
            bench(f"bare_whole_{requested}", bare["rows"], bare["wall_s"], _child_rss_mb(), chosen=chosen)
            bench(f"bare_loop_{requested}", bare["rows"], loop_s, _child_rss_mb(),
                  startup_s=bare["wall_s"] - loop_s)
            if n in args.bare_tuned_sizes:
                tuned = run_bare(corpora[n], work / "bare", ns, BATCH, CPU_ACTOR_TUNABLES)
                tuned_loop_s = loop_seconds(tuned)
                bench(f"bare_whole_{requested}_actor_malloc", tuned["rows"], tuned["wall_s"], _child_rss_mb())
                bench(f"bare_loop_{requested}_actor_malloc", tuned["rows"], tuned_loop_s, _child_rss_mb())
            m = run["manifest"]
            assert m["rows_in"] == bare["rows"] and m["rows_kept"] == bare["scored"], (m["rows_in"], bare)
            steady_s = run["signals_end_s"] - run["ready_s"]
            bench(f"djray_whole_{requested}", m["rows_in"], run["wall_s"], run["rss"], ready_s=run["ready_s"],
                  phase_a_end_s=run["signals_end_s"], chosen=chosen,
                  threads=run["model"]["threads"], actors=run["model"]["resources"]["pool_size"],
                  calls=run["model"]["resources"].get("calls", 1))
            bench(f"djray_steady_{requested}", m["rows_in"], steady_s, run["rss"])
            print("    " + "; ".join(run["notes"]) + f"; precision: {run['model']['precision']['why']}; "
                  f"phases {m['run']['phases_s']}", flush=True)
            whole["bare"][n], whole["djray"][n] = bare["wall_s"], run["wall_s"]
            ratios.append(f"{requested} ({chosen}) {n} images: djray/bare whole run "
                          f"{bare['wall_s'] / run['wall_s']:.2f}, "
                          f"steady {(m['rows_in'] / steady_s) / (bare['rows'] / loop_s):.2f} "
                          f"(djray {m['rows_in'] / run['wall_s']:.1f} / {m['rows_in'] / steady_s:.1f} img/s, bare "
                          f"{bare['rows'] / bare['wall_s']:.1f} / {bare['rows'] / loop_s:.1f}, op alone "
                          f"{op_rate:.1f}, {actor_rate:.1f} with the actors' allocator)")
            if n in args.bare_tuned_sizes:
                ratios.append(f"    against the bare loop with the actors' allocator too: whole "
                              f"{tuned['wall_s'] / run['wall_s']:.2f}, steady "
                              f"{(m['rows_in'] / steady_s) / (tuned['rows'] / tuned_loop_s):.2f}")
        if len(sizes) >= 2:
            a, b = min(sizes), max(sizes)
            rates = {k: (b - a) / (v[b] - v[a]) for k, v in whole.items()}
            for k, r in rates.items():
                print(f"BENCH name={k}_marginal_{requested} rows={b - a} wall_s={whole[k][b] - whole[k][a]:.2f} "
                      f"peak_rss_mb={_child_rss_mb():.0f} img_s={r:.1f}", flush=True)
            ratios.append(f"{requested} marginal {a}->{b}: djray/bare {rates['djray'] / rates['bare']:.2f}")
    print("\nratios (>= 1: djray as fast as the bare loop):\n" + "\n".join(ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
