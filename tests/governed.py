"""A small governed output with every kind of column, for the tests that read it (interop, inspect): vision with a
random class head (ε = 0 so evidence is never empty), the `concat` text branch, a `random` sieve, and three rows the
decode stage rejects."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import djray
from corpus import write_bad_rows_shard
from djray.sample_data import write_sample_corpus

VISION = {"model": "test_vit", "weights": "random", "image_size": 64, "ratio": 0.5, "batch_size": 8,
          "precision": "fp32", "head": {"kind": "dino_linear", "weights": "random", "threshold": 0.0, "top_k": 2}}
BAD = {"x1corrupt": "corrupt_image", "x2nocap": "empty_caption", "x3tiny": "image_too_small"}


def governed_output(root: Path) -> tuple[Path, djray.Manifest]:
    """Run the job into root/out (corpus in root/corpus): 24 good samples in 2 shards + a shard with 3 bad rows."""
    corpus = root / "corpus"
    write_sample_corpus(str(corpus), 24, 2, "webdataset", seed=13)
    write_bad_rows_shard(corpus / "00002.tar", good_caption="A red rectangle.")
    manifest = djray.run({"input": {"path": str(corpus), "format": "webdataset"}, "output": {"path": str(root / "out")},
                          "vision": VISION, "text": {"mode": "concat"},
                          "sieve": [{"op": "random", "keep_fraction": 0.75, "seed": 1}]},
                         progress=False, log=lambda m: None)
    return root / "out", manifest


def output_table(out: Path, kind: str) -> pa.Table:
    """Every file of OUTPUT/<kind>/ (data, rejects or signals) in file-name order, as one table."""
    return pa.concat_tables([pq.read_table(f) for f in sorted((out / kind).glob("*.parquet"))])
