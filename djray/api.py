"""djray from Python: `run` and `validate` a job, read its manifest as a typed object.

    import djray
    manifest = djray.run("configs/demo.yaml", **{"output.mode": "overwrite"})   # or output__mode="overwrite"
    print(manifest.rows_kept, manifest.rejected_by_reason)

A config is a YAML path, a dict (the YAML's structure) or a `djray.config.JobConfig`. Overrides take the dotted keys
of the command line's `--set` (`"vision.ratio": 0.3`, or `vision__ratio=0.3` as a keyword), with Python values.
The command line's exit codes become exceptions: `ConfigError` (exit 2, raised before any work) and `JobError`
(exit 1, the job failed; calling `run` again resumes it).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from djray.config import ConfigError, JobConfig, parse_config, read_yaml, set_dotted

ConfigLike = str | Path | dict[str, Any] | JobConfig


@dataclass(frozen=True)
class Manifest:
    """OUTPUT/manifest.json as a typed object; `raw` is the whole manifest dict (`manifest["models"]` reads it)."""

    status: str
    schema_version: int
    djray_version: str
    config_sha256: str
    rows_in: int
    rows_kept: int
    rows_rejected: int
    rejected_by_reason: dict[str, int]
    rejected_by_stage: dict[str, int]
    caption_source: dict[str, int]
    selection: list[dict[str, Any]]
    shards_total: int
    shards_done: int
    accounting_ok: bool
    elapsed_s: float
    error: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Manifest:
        names = [f for f in cls.__dataclass_fields__ if f not in ("raw", "elapsed_s", "error")]
        return cls(**{n: raw[n] for n in names}, elapsed_s=float(raw["run"]["elapsed_s"]), error=raw.get("error"),
                   raw=raw)

    @classmethod
    def read(cls, output: str | Path) -> Manifest:
        """The manifest of a finished (or failed) run at `output` (a local directory)."""
        import json

        return cls.from_dict(json.loads((Path(output) / "manifest.json").read_text(encoding="utf-8")))

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def summary(self) -> str:
        """The end-of-run summary `djray run` prints."""
        from djray.runtime.manifest import format_summary

        return format_summary(self.raw)


@dataclass(frozen=True)
class Validation:
    """What `validate` found: the typed config, the input's shards, the stages that would run, the fingerprints."""

    config: JobConfig
    shards: list[str]
    stages: list[str]
    fingerprints: dict[str, str]


def load(config: ConfigLike, **overrides: Any) -> JobConfig:
    """`config` (path, dict or JobConfig) with `overrides` applied, validated: ConfigError names the key at fault."""
    if isinstance(config, JobConfig):
        raw: Any = config.model_dump(mode="json", by_alias=True)
    elif isinstance(config, dict):
        import copy

        raw = copy.deepcopy(config)
    elif isinstance(config, (str, Path)):
        raw = read_yaml(config)
    else:
        raise ConfigError(f"config: expected a YAML path, a dict or a JobConfig, got {type(config).__name__}")
    for key, value in overrides.items():
        if not isinstance(raw, dict):
            break  # parse_config reports the top-level problem
        dotted = key.replace("__", ".")
        set_dotted(raw, dotted, value, f"override {dotted}")
    return parse_config(raw)


def validate(config: ConfigLike, **overrides: Any) -> Validation:
    """Every check `run` makes before reading data (`djray validate`); raises ConfigError naming the key."""
    from djray.preflight import prepare

    cfg = load(config, **overrides)
    plan = prepare(cfg)
    return Validation(cfg, plan.shards, cfg.stages(), plan.fps.as_dict())


def run(config: ConfigLike, *, progress: bool = True, log: Callable[[str], None] | None = None,
        **overrides: Any) -> Manifest:
    """Validate, then run (or resume) the job; returns its manifest. Attaches to a running Ray (`ray.init()` in the
    notebook, `ray.address`, RAY_ADDRESS) or starts a local instance. Progress lines go to stderr."""
    from djray import pipeline

    cfg = load(config, **overrides)
    say = log or (lambda m: print(m, file=sys.stderr))
    return Manifest.from_dict(pipeline.run(cfg, progress=progress, log=say))
