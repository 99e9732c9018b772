"""Where everything of one output lives (ARCHITECTURE §2 plus djray's own bookkeeping under `_djray/`, which
Parquet dataset readers skip because the name starts with `_`).

    OUTPUT/data/<stem>.parquet                      kept rows, sorted by src_index (stem: the shard path minus suffix)
    OUTPUT/rejects/<stem>.parquet                   rejected rows: stage / reason / detail + the source columns
    OUTPUT/signals/<stem>.parquet                   every input row's signals (phase A), kept after the run
    OUTPUT/manifest.json
    OUTPUT/_djray/job.json                          the fingerprints of the run that owns this output
    OUTPUT/_djray/staging/<shard>/<rows>.parquet    phase A fragments (signal columns only) until the shard is sealed
    OUTPUT/_djray/sealed/<signals sha>/<shard>.json phase A of the shard is complete: its signals file is written
    OUTPUT/_djray/select/<i>-<op>-<step sha>.json                 phase B step i is complete: its counts
    OUTPUT/_djray/select/<i>-<op>-<step sha>/<shard>.parquet      step i's decisions for one shard
    OUTPUT/_djray/select/<i>-infogrowth-<step sha>/recaption/<shard>/  an infogrowth recaption step's recaptions
    OUTPUT/_djray/select/<i>-infogrowth-<step sha>/recaptioned/<shard>.json  (runtime/recaption_store.py)
    OUTPUT/_djray/out/<output sha>/patches/<shard>/  column patches of the ops that see kept rows only (text)
    OUTPUT/_djray/out/<output sha>/patched/<shard>.json
    OUTPUT/_djray/done/<output sha>/<shard>.json    the shard's data/rejects files are those of this output: counts
    OUTPUT/_djray/models/<op>.json                  what a model-loading op loaded (sources, checksums)
    OUTPUT/_djray/reference/<ref sha>/reference.parquet  vas reference images, embedded (+ reference.json: counts)

`<shard>` is the shard path relative to the input root, URL-quoted into one file name. Markers whose directory names a
fingerprint are found by listing that directory once: a resume of 40,000 shards is a handful of listings.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

SUFFIXES = (".tar.gz", ".tgz", ".tar", ".parquet")


def stem(src_shard: str) -> str:
    for suffix in SUFFIXES:
        if src_shard.endswith(suffix):
            return src_shard[: -len(suffix)]
    return src_shard


def flat(src_shard: str) -> str:
    """A shard path as one file name (reversible with `unflat`)."""
    return quote(src_shard, safe="")


def unflat(name: str) -> str:
    return unquote(name)


class Layout:
    def __init__(self, root: str):
        self.root = root.rstrip("/")
        self.state = f"{self.root}/_djray"

    # ---- the data contract -------------------------------------------------------------------------------------
    def data(self, src_shard: str) -> str:
        return f"{self.root}/data/{stem(src_shard)}.parquet"

    def rejects(self, src_shard: str) -> str:
        return f"{self.root}/rejects/{stem(src_shard)}.parquet"

    def signals(self, src_shard: str) -> str:
        return f"{self.root}/signals/{stem(src_shard)}.parquet"

    @property
    def manifest(self) -> str:
        return f"{self.root}/manifest.json"

    # ---- bookkeeping -------------------------------------------------------------------------------------------
    @property
    def job(self) -> str:
        return f"{self.state}/job.json"

    def staging_dir(self, src_shard: str) -> str:
        return f"{self.state}/staging/{flat(src_shard)}"

    def sealed_dir(self, signals_sha: str) -> str:
        return f"{self.state}/sealed/{signals_sha[:16]}"

    @property
    def selection_dir(self) -> str:
        return f"{self.state}/select"

    def step_marker(self, step: str) -> str:
        return f"{self.selection_dir}/{step}.json"

    def step_dir(self, step: str) -> str:
        return f"{self.selection_dir}/{step}"

    def step_decisions(self, step: str, src_shard: str) -> str:
        return f"{self.step_dir(step)}/{flat(src_shard)}.parquet"

    def output_dir(self, output_sha: str) -> str:
        return f"{self.state}/out/{output_sha[:16]}"

    def patch_dir(self, output_sha: str, src_shard: str) -> str:
        return f"{self.output_dir(output_sha)}/patches/{flat(src_shard)}"

    def patched_dir(self, output_sha: str) -> str:
        return f"{self.output_dir(output_sha)}/patched"

    def done_dir(self, output_sha: str) -> str:
        return f"{self.state}/done/{output_sha[:16]}"

    def model_record(self, op_name: str) -> str:
        return f"{self.state}/models/{op_name}.json"
