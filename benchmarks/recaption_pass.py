"""Cost of infogrowth `recaption: true` through the phase-B runtime, against a bare loop doing the same model work in
one process.

Work per size: a signals store of `rows` synthetic rows (4 shards; 512-d unit image embeddings, clip_score uniform
in [0, 0.4), captions of ~12 words), then infogrowth's cleaner with `align_quantile: 0.5, recaption: true` — δ from
the quantile, half the rows re-captioned and re-scored, the decisions written. The engine is an OpenAI-protocol stub
server on loopback that answers at once (so the numbers are djray's own cost around an LLM, not an LLM's); the CLIP
text tower is open_clip ViT-B-16 with random weights, fp32 on CPU.

* `recaption_step`  — `run_selection` with that one step (Ray local instance: the read tasks, the text actor pool,
                      the CLIP text actor pool, the side files, the counts, the decisions); peak RSS is the driver's.
* `recaption_bare`  — the same rows below δ through `RecaptionOp` and `ClipTextScorer.encode_texts` in this process,
                      models already loaded (no Ray, no files): the floor the runtime is compared with.

    python benchmarks/recaption_pass.py [--rows 200,800] [--cpus 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from synthetic_signals import _list_column  # noqa: E402

from djray import schema as S  # noqa: E402
from djray.io.fs import Storage  # noqa: E402
from djray.ops.sieve.infogrowth import CleanParams  # noqa: E402
from djray.ops.text.params import TextParams  # noqa: E402
from djray.ops.vision.clip_embed import ClipParams  # noqa: E402
from djray.runtime.decisions import SelectionContext  # noqa: E402
from djray.runtime.layout import Layout  # noqa: E402

WORDS = "a red green blue dog cat car tree house beach photo of on the with near and small large old".split()


def write_store(root: str, rows: int, shards: int = 4, dim: int = 512) -> list[str]:
    rng = np.random.default_rng(0)
    names = [f"shard-{i:03d}.tar" for i in range(shards)]
    for s, name in enumerate(names):
        n = len(range(s, rows, shards))
        img = rng.standard_normal((n, dim), np.float32)
        txt = rng.standard_normal((n, dim), np.float32)
        cols = {S.KEY: pa.array([f"{s:03d}-{i:07d}" for i in range(n)]), S.SRC_SHARD: pa.array([name] * n),
                S.SRC_INDEX: pa.array(np.arange(n, dtype=np.int64)),
                **{c: pa.nulls(n, pa.string()) for c in (S.STAGE, S.REASON, S.DETAIL)},
                S.CAPTION_RAW: pa.array([" ".join(rng.choice(WORDS, 12)) + f" {s} {i}" for i in range(n)]),
                S.CLIP_IMAGE_EMBEDDING: _list_column(img / np.linalg.norm(img, axis=1, keepdims=True)),
                S.CLIP_TEXT_EMBEDDING: _list_column(txt / np.linalg.norm(txt, axis=1, keepdims=True)),
                S.CLIP_SCORE: pa.array((rng.random(n) * 0.4).astype(np.float32))}
        path = Layout(root).signals(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pq.write_table(pa.table(cols), path)
    return names


def params(endpoint: str) -> CleanParams:
    text = TextParams(mode="rewrite", evidence="none", engine="openai", model="stub", endpoint=endpoint,
                      api_key_env=None, resources={"num_cpus": 1, "num_gpus": 0, "pool_size": 1})
    clip = ClipParams(weights="random", batch_size=64, resources={"num_cpus": 1, "pool_size": 1})
    return CleanParams(align_quantile=0.5, recaption=True, text=text, clip=clip)


def runtime(root: str, rows: int, endpoint: str, cpus: int) -> tuple[float, dict]:
    from djray.runtime.select import run_selection, steps_of

    names = write_store(root, rows)
    steps = [params(endpoint)]
    ctx = SelectionContext(root, root, Storage(), tuple(names), "b" * 64, steps_of(steps, ["0" * 64]))
    t0 = time.perf_counter()
    record = run_selection(ctx, steps, lambda: rows, lambda: {S.CLIP_SCORE: 4.0}, cpus)[0]
    return time.perf_counter() - t0, record


def bare(root: str, endpoint: str) -> tuple[float, int]:
    """The rows below δ (the same δ) through the two ops in this process, models loaded before the clock starts."""
    from djray.ops.text.recaption import RecaptionOp
    from djray.ops.vision.clip_text import ClipTextScorer

    table = pq.read_table(sorted(Path(root, "signals").glob("*.parquet")))
    align = table.column(S.CLIP_SCORE).to_numpy()
    n_drop = int(np.floor(0.5 * len(align) + 0.5))
    delta = np.sort(align)[n_drop]
    low = table.filter(pa.array(align < delta))
    p = params(endpoint)
    text, clip = RecaptionOp(p.text), ClipTextScorer(p.clip)
    text.setup()
    clip.setup()
    batch = low.append_column(S.REJECT_REASON, pa.nulls(low.num_rows, pa.string()))
    t0 = time.perf_counter()
    out = text(batch)
    captions = [c for c in out[S.RECAPTION].to_pylist() if c is not None]
    for start in range(0, len(captions), 64):
        clip.encode_texts(captions[start:start + 64])
    return time.perf_counter() - t0, low.num_rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="200,800")
    ap.add_argument("--cpus", type=int, default=2)
    args = ap.parse_args()
    import ray
    from llm_fixtures import LLMServer

    from djray._compat import patch_torchvision

    patch_torchvision()
    server = LLMServer()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    for rows in (int(x) for x in args.rows.split(",")):
        with tempfile.TemporaryDirectory() as root:
            wall, record = runtime(root, rows, server.endpoint, args.cpus)
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            r = record["recaption"]
            print(f"BENCH name=recaption_step rows={rows} wall_s={wall:.2f} peak_rss_mb={rss:.0f} "
                  f"recaptioned={r['recaptioned']} rescued={r['rescued']} failed={r['failed']} "
                  f"recaptions_per_s={r['recaptioned'] / wall:.1f}", flush=True)
            bare_wall, low = bare(root, server.endpoint)
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"BENCH name=recaption_bare rows={rows} wall_s={bare_wall:.2f} peak_rss_mb={rss:.0f} "
                  f"recaptioned={low} recaptions_per_s={low / bare_wall:.1f} "
                  f"ratio_step_over_bare={wall / bare_wall:.2f}", flush=True)
    ray.shutdown()
    server.shutdown()


if __name__ == "__main__":
    main()
