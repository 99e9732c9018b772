"""Throughput of read → decode → vision → write: a djray run on a local Ray instance vs a bare one-process loop.

What is compared (same corpus, same CPUs, same model and precision, measured in this one run):

* bare loop — a fresh Python process (`--bare-child`), torch's default thread count (all cores): imports torch and
  timm, builds the model, reads each tar, decodes every image with PIL (`open_image`, the same checks), applies the
  caption/min-side policy, takes the canonical crop, and every `--batch-size` crops runs ONE DINO forward
  (`forward_dino`: CLS→patch logits in fp32, the rest at the chosen precision), aggregates the heads into patch
  scores, picks top-k patches (`select_patches`), keeps the [CLS] embedding, and writes one Parquet file of kept rows
  (scores, indices, embedding, image bytes) per shard. Timed from spawn to exit; its own breakdown says how much of
  that was interpreter start + imports + model build.
* djray — `pipeline.run` of the equivalent config (`vision:` with `weights: random`) on a running local Ray instance:
  read tasks (read + decode + crop fused), the vision actor pool, staging, duplicate-key pass, per-shard final write
  and manifest. The actors' process start, imports and model build are inside the timing. `ray.init` and Ray Data's
  once-per-cluster actors (created by a warm-up dataset) are not: a cluster pays them once, not per job.

Three ratios djray / bare are printed (≥ 1.0: djray is as fast as the hand-written loop):

1. whole runs — each side pays its own start-up (bare: interpreter + imports + model; djray: actor processes);
2. conservative — the bare loop alone (its timed read/decode/forward/write parts; interpreter start, imports and
   model build removed), djray with its actors' start-up;
3. steady state — both without start-up: djray after its last vision actor was ready, the bare loop alone.

It also prints where djray's CPU time went (vision actors, task workers, Ray's own processes, the driver; sampled from
/proc) next to the bare process's CPU time, and the model alone at 1 thread and at all threads, fp32 and bf16 (on CPUs
without AMX, bf16 autocast is slower than fp32: choose `vision.precision` by measuring here).

Resources: inside a `num_cpus=1` actor Ray pins torch to ONE thread, so one actor uses one core. `pool_size` = number
of CPUs with `num_cpus: 1` each takes every CPU of the local instance and the read / staging tasks never get
scheduled (djray refuses such a config). The default here is `num_cpus = min(1, (cpus-1)/pool_size)`: 2 actors ×
0.5 CPU on 2 CPUs (each still one torch thread).

    python benchmarks/vision_throughput.py [--samples 2000] [--shards 8] [--pool-size 1 2] [--batch-size 16 32]
                                           [--precision fp32|bf16] [--repeats 2] [--cpus N] [--no-probe]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
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


def forward_rate(model_name: str, image_size: int, precision: str, batch_size: int, threads: int) -> float:
    """Images/s of the model alone (forward + scores) at a given torch thread count, on random crops."""
    import torch

    from djray.models.dino import build_dino, forward_dino
    from djray.ops.vision.dino_patch import aggregate_heads

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model, _ = build_dino(model_name, "random", image_size)
        x = torch.randn(batch_size, 3, image_size, image_size)
        forward_dino(model, x[:2], precision=precision)  # warm-up
        t0 = time.perf_counter()
        for _ in range(2):
            o = forward_dino(model, x, precision=precision)
            aggregate_heads(o.cls_logits, o.num_prefix_tokens, "mean_prob")
        return 2 * batch_size / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)


def run_bare(corpus: Path, out: Path, args: argparse.Namespace, batch: int) -> dict:
    """The bare loop in a fresh interpreter, timed from spawn to exit (start-up included)."""
    import json
    import subprocess

    spec = {"corpus": str(corpus), "out": str(out), "model": args.model, "image_size": args.image_size,
            "precision": args.precision, "batch": batch}
    before = os.times()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--bare-child", json.dumps(spec)], capture_output=True,
                          text=True, check=True)
    wall = time.perf_counter() - t0
    after = os.times()
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    result["cpu_s"] = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return result


def bare_child(spec_json: str) -> int:
    import json

    spec = json.loads(spec_json)
    rows, scored, parts = bare_loop(Path(spec["corpus"]), Path(spec["out"]), spec["model"], spec["image_size"],
                                    spec["precision"], spec["batch"], 0.5)
    print(json.dumps({"rows": rows, "scored": scored, "parts": parts}))
    return 0


# ---- where djray's CPU time goes --------------------------------------------------------------------------------

_ROLES = (("vision actors", ("MapWorker(",)),
          ("Ray Data's own actors", ("_StatsActor", "Autoscaling", "SplitCoordinator")),
          ("task workers (read/decode/stage/dedup/write)", ("ray::",)),
          ("Ray system (raylet, GCS, agents)", ("raylet", "gcs_server", "dashboard", "agent", "log_monitor")))


def _role(cmdline: str) -> str | None:
    for role, needles in _ROLES:
        if any(n in cmdline for n in needles):
            return role
    return None


class CpuSampler:
    """Samples utime+stime of every Ray process from /proc every `period` s; a process that exits keeps its last
    sample (≤ one period lost). Linux only; elsewhere it reports nothing."""

    def __init__(self, period: float = 0.25):
        import threading

        self.period, self.seen, self.base = period, {}, {}
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._stop = threading.Event()
        self.base = self._snapshot()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _snapshot(self) -> dict[int, tuple[str, float]]:
        out: dict[int, tuple[str, float]] = {}
        for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()) if os.path.isdir("/proc") else ():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            role = _role(cmd)
            if role is not None and pid != os.getpid():
                out[pid] = (role, (int(fields[11]) + int(fields[12])) / self.tick)
        return out

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.seen.update(self._snapshot())

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self.seen.update(self._snapshot())
        totals: dict[str, float] = {}
        for pid, (role, cpu) in self.seen.items():
            totals[role] = totals.get(role, 0.0) + cpu - self.base.get(pid, (role, 0.0))[1]
        return totals


class _Timeout(Exception):
    pass


def _alarm(signum, frame):  # noqa: ARG001
    raise _Timeout()


def run_djray(corpus: Path, out: Path, args: argparse.Namespace, batch: int, pool: int, vcpus: float) -> dict:
    from djray import pipeline
    from djray.config import parse_config

    shutil.rmtree(out, ignore_errors=True)
    cfg = parse_config({
        "input": {"path": str(corpus), "format": "webdataset", "rows_per_block": args.rows_per_block or batch},
        "output": {"path": str(out)},
        "vision": {"model": args.model, "weights": "random", "image_size": args.image_size,
                   "precision": args.precision, "batch_size": batch, "ratio": 0.5, "strategy": "topk",
                   "resources": {"pool_size": pool, "num_cpus": vcpus}}})
    sampler = CpuSampler()
    before = os.times()
    t0 = time.perf_counter()
    manifest = pipeline.run(cfg, progress=False, log=lambda m: None)
    wall = time.perf_counter() - t0
    after = os.times()
    cpu = sampler.stop()
    cpu["driver"] = (after.user - before.user) + (after.system - before.system)
    record = out / "_djray" / "models" / "dino_patch.json"  # written by each actor once its model is built
    return {"wall_s": wall, "ready_s": record.stat().st_mtime - (time.time() - wall), "manifest": manifest,
            "cpu": cpu}


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--bare-child":
        return bare_child(sys.argv[2])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=2000, help="images in the corpus")
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--pool-size", type=int, nargs="+", default=None,
                    help="vision actors (one or more values to compare; default: the number of CPUs)")
    ap.add_argument("--batch-size", type=int, nargs="+", default=[32], help="images per forward (one or more)")
    ap.add_argument("--vision-cpus", type=float, default=None,
                    help="vision.resources.num_cpus per actor (default: min(1, (cpus-1)/pool_size), so one CPU stays "
                         "free for the read and staging tasks)")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved repetitions; the best time of each side counts")
    ap.add_argument("--rows-per-block", type=int, default=None, help="input.rows_per_block (default: the batch size)")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--model", default="vit_small_patch16_224.dino")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--cpus", type=int, default=os.cpu_count())
    ap.add_argument("--timeout", type=int, default=900, help="seconds before a djray run counts as hung")
    ap.add_argument("--no-probe", action="store_true", help="skip the model-only thread/precision probe")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    pools = args.pool_size or [args.cpus]

    import ray

    from djray.sample_data import write_sample_corpus

    work = Path(args.workdir or tempfile.mkdtemp(prefix="djray-vbench-"))
    corpus = work / f"corpus-{args.samples}-{args.shards}"
    if not corpus.exists():
        write_sample_corpus(str(corpus), args.samples, args.shards, "webdataset", seed=0)
    print(f"corpus: {args.samples} images, {args.shards} shards; {args.cpus} CPUs; model {args.model} "
          f"({args.image_size}px, weights random, {args.precision})")
    if not args.no_probe:
        import torch

        b, n = args.batch_size[0], torch.get_num_threads()
        for precision in ("fp32", "bf16"):
            r1 = forward_rate(args.model, args.image_size, precision, b, 1)
            rn = forward_rate(args.model, args.image_size, precision, b, n)
            print(f"model only ({precision}, forward+scores, batch {b}): {r1:6.1f} img/s at 1 thread, {rn:6.1f} "
                  f"img/s at {n} threads")

    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    ray.data.range(8).materialize()  # Ray Data's once-per-cluster actors, like ray.init: not part of a job
    signal.signal(signal.SIGALRM, _alarm)
    summary: list[str] = []
    for batch in args.batch_size:
        bares: list[dict] = []
        runs: dict[int, list[dict]] = {p: [] for p in pools}
        for rep in range(args.repeats):  # interleaved, best-of: the machine may be shared with other work
            bare = run_bare(corpus, work / "bare", args, batch)
            bares.append(bare)
            parts = bare["parts"]
            print(f"\nbatch {batch} run {rep + 1}: bare process: {bare['rows'] / bare['wall_s']:6.1f} img/s "
                  f"({bare['wall_s']:.2f}s wall, {bare['cpu_s']:.1f}s CPU, {bare['scored']} scored; "
                  + ", ".join(f"{k} {v:.2f}s" for k, v in parts.items()) + f"; load avg {os.getloadavg()[0]:.1f})")
            for pool in pools:
                vcpus = args.vision_cpus or min(1.0, (args.cpus - 1) / pool)
                signal.alarm(args.timeout)
                try:
                    run = run_djray(corpus, work / "djray", args, batch, pool, vcpus)
                except _Timeout:
                    print(f"batch {batch} run {rep + 1}: djray pool {pool} x {vcpus:g} CPU: TIMEOUT after "
                          f"{args.timeout}s")
                    continue
                finally:
                    signal.alarm(0)
                m = run["manifest"]
                assert m["rows_in"] == bare["rows"] and m["rows_kept"] == bare["scored"], (m["rows_in"], bare)
                run["pool"], run["vcpus"] = pool, vcpus
                runs[pool].append(run)
                cpu = run["cpu"]
                print(f"batch {batch} run {rep + 1}: djray, pool {pool} x {vcpus:g} CPU: "
                      f"{m['rows_in'] / run['wall_s']:6.1f} img/s ({run['wall_s']:.2f}s wall, "
                      f"{sum(cpu.values()):.1f}s CPU; last vision actor ready at {run['ready_s']:.1f}s; phases "
                      f"{m['run']['phases_s']}; load avg {os.getloadavg()[0]:.1f})")
                print("    djray CPU by role: " + ", ".join(f"{k} {v:.1f}s" for k, v in
                                                             sorted(cpu.items(), key=lambda kv: -kv[1])))
        bare = min(bares, key=lambda b: b["wall_s"])
        rows = bare["rows"]
        loop_s = sum(v for k, v in bare["parts"].items() if k not in ("imports", "model"))
        startup = bare["wall_s"] - loop_s  # interpreter start, imports, model build: everything outside the loop
        for pool, rs in runs.items():
            if not rs:
                continue
            run = min(rs, key=lambda r: r["wall_s"])
            whole = bare["wall_s"] / run["wall_s"]
            conservative = loop_s / run["wall_s"]
            steady = loop_s / (run["wall_s"] - run["ready_s"])
            line = (f"batch {batch}, pool {pool} x {run['vcpus']:g} CPU (best of {len(rs)} vs best of {len(bares)}): "
                    f"djray / bare = {whole:.2f} whole runs [{rows / bare['wall_s']:.1f} vs "
                    f"{rows / run['wall_s']:.1f} img/s]; {conservative:.2f} with the bare loop's start-up "
                    f"({startup:.1f}s) removed; {steady:.2f} steady state (djray's first {run['ready_s']:.1f}s "
                    f"removed too)")
            print("\n" + line)
            summary.append(line)
    ray.shutdown()
    print("\nsummary:\n" + "\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
