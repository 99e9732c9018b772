"""Write a signals store straight to disk (no phase A), for phase-B tests: shards of rows in the signals schema."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from djray import schema as S
from djray.io import fs as iofs
from djray.io.fs import Storage
from djray.ops.sieve import SieveParams
from djray.runtime.decisions import SelectionContext
from djray.runtime.layout import Layout
from djray.runtime.select import steps_of


def write_store(root: Path, shards: dict[str, list[dict]]) -> None:
    """`shards`: shard name → rows (dicts with any signals columns; src_shard/src_index are filled in)."""
    layout = Layout(str(root))
    schema = S.signals_schema()
    fs = iofs.resolve(str(root), Storage())[0]
    for name, rows in shards.items():
        rows = [{**r, S.SRC_SHARD: name, S.SRC_INDEX: i} for i, r in enumerate(rows)]
        cols = {f.name: pa.array([r.get(f.name) for r in rows], f.type) for f in schema}
        iofs.write_table_atomic(fs, layout.signals(name), pa.table(cols, schema=schema))


def context(root: Path, shards: list[str], params: list[SieveParams], tag: str = "t") -> SelectionContext:
    shas = [f"{tag}{i:02d}" + "0" * 40 for i in range(len(params))]
    return SelectionContext(str(root), str(root), Storage(), tuple(shards), tag, steps_of(params, shas))
