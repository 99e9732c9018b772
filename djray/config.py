"""Job configuration: YAML → strict typed models. Unknown keys are errors that name the key.

Stages run when their section is present: `input` + `output` alone runs read → decode → write.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from djray.ops.base import RUNTIME, is_runtime
from djray.models import weights as W
from djray.ops.caption_check import CaptionParams
from djray.ops.decode import DecodeParams
from djray.ops.sieve import CLIP_SIEVES, EMBEDDING_SIEVES, SieveParams, SieveSpec, expand_steps
from djray.ops.sieve.key_dedup import KeyDedupParams
from djray.ops.text.params import TextParams
from djray.ops.vision.clip_embed import ClipParams
from djray.ops.vision.params import VisionParams


class ConfigError(Exception):
    """A configuration problem, reported before any work starts. The message names the offending key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _non_empty(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be empty")
    return v


NonEmptyStr = Annotated[str, AfterValidator(_non_empty)]  # a path or name that may not be blank


class ParquetColumns(Section):
    key: str = "key"
    image: str = "jpg"
    caption: str = "txt"


class InputConfig(Section):
    path: NonEmptyStr = Field(description="local directory, glob or file; or s3://bucket/prefix")
    format: Literal["webdataset", "parquet"]
    columns: ParquetColumns = ParquetColumns()
    # Rows per block a read task emits; the fused CPU stages (decode, caption policy) process one such block at a
    # time. Downstream, Ray Data may coalesce stage outputs up to its target block size (128 MiB).
    rows_per_block: int = Field(256, ge=1, description="rows per block a read task emits", json_schema_extra=RUNTIME)


class StorageTimeouts(Section):
    connect_s: float = Field(W.DEFAULT_CONNECT_TIMEOUT_S, gt=0, description="to open a connection")
    request_s: float = Field(W.DEFAULT_REQUEST_TIMEOUT_S, gt=0,
                             description="the AWS SDK's request timeout (on Linux: the longest a transfer may stall)")


class StorageConfig(Section):
    """S3 endpoint and retry options. Credentials never live here: they come from the standard AWS chain.

    How a transient failure is retried (request, object, task): djray.io.errors. These keys change how a job runs,
    not what it writes: they are not part of the config hash."""

    endpoint_url: str | None = None
    region: str | None = None
    retries: int = Field(W.DEFAULT_S3_RETRIES, ge=1, description="attempts per S3 request (AWS SDK, "
                         "exponential backoff from 25 ms); the default carries a job through a store that throttles "
                         "one request in five")
    timeouts: StorageTimeouts = StorageTimeouts()


class OutputConfig(Section):
    path: str = Field(json_schema_extra=RUNTIME)
    mode: Literal["resume", "overwrite"] = Field("resume", json_schema_extra=RUNTIME)
    compression: Literal["zstd", "snappy", "gzip", "none"] = "zstd"


class RayConfig(Section):
    address: str | None = Field(None, description="cluster to attach to; default RAY_ADDRESS, else a local instance")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the local instance (ignored when attaching)")
    max_concurrent_finalize: int | None = Field(None, ge=1, description="final-write tasks in flight at once "
                                                "(default: the cluster's CPUs)")
    task_retries: int = Field(3, ge=0, description="times Ray reruns a read/write task that failed on storage after "
                              "every retry of its requests (or whose worker died); then the job fails, resumable")
    seal_rows: int = Field(10_000, ge=1, description="completed shards are sealed together, up to about this many "
                           "rows per seal task; a killed driver restages at most the shards of one such batch")


def _default(model: type[BaseModel], name: str) -> Any:
    return model.model_fields[name].default


class DecodeConfig(Section):
    max_pixels: int = Field(_default(DecodeParams, "max_pixels"), gt=0)
    min_side: int = Field(_default(DecodeParams, "min_side"), ge=1)
    caption: CaptionParams = CaptionParams()


class SignalsConfig(Section):
    """Where phase A's signals come from: this output (default) or another run's output (`from`), so a GPU-days
    juicing pass can be re-selected into a new dataset on CPUs."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: NonEmptyStr | None = Field(None, alias="from", json_schema_extra=RUNTIME,
                                      description="another djray output whose signals/ this run selects from")


class JobConfig(Section):
    input: InputConfig
    output: OutputConfig
    storage: StorageConfig = Field(StorageConfig(), json_schema_extra=RUNTIME)
    ray: RayConfig = Field(RayConfig(), json_schema_extra=RUNTIME)
    decode: DecodeConfig = DecodeConfig()
    vision: VisionParams | None = None
    clip: ClipParams | None = None
    signals: SignalsConfig = SignalsConfig()
    sieve: list[SieveSpec] = Field(default_factory=list, description="sample-level governors, in order")
    text: TextParams | None = None
    report: bool = Field(False, json_schema_extra=RUNTIME,
                         description="write OUTPUT/report.html at the end of `djray run` (docs/report.md)")

    @field_validator("sieve")
    @classmethod
    def _key_dedup_first(cls, v: list[SieveParams]) -> list[SieveParams]:
        if any(s.op == "key_dedup" for s in v[1:]):
            raise ValueError("key_dedup always runs first (keys are unique in the output); list it first or not at all")
        expand_steps(v)  # e.g. two semdedup steps would publish the same columns
        return v

    def steps(self) -> list[SieveParams]:
        """The phase-B steps in order: key_dedup first (always), then the configured sieves, each as the runtime
        steps it runs as (semdedup: scan + cut; d4: scan + cut + prune)."""
        sieves = list(self.sieve) if self.sieve and self.sieve[0].op == "key_dedup" else [KeyDedupParams(), *self.sieve]
        # a re-captioning step runs the job's text engine and CLIP text tower: it carries both sections
        return [s.model_copy(update={"text": self._recaption_text(), "clip": self.clip})
                if getattr(s, "recaption", False) else s for s in expand_steps(sieves)]

    def _recaption_text(self) -> TextParams | None:
        """The `text:` section as the recaption uses it: the rewrite prompt (P_M, plus P_O with class evidence)."""
        return None if self.text is None else self.text.model_copy(update={"mode": "rewrite"})

    def cross_check(self) -> None:
        """Checks across sections: a sieve reading CLIP or DINO signals needs the section that computes them."""
        for i, s in enumerate(self.sieve):
            if getattr(s, "recaption", False):
                self._recaption_needs(f"sieve.{i}.{s.op}.recaption")
            if s.op in CLIP_SIEVES and self.clip is None:
                raise ConfigError(f"sieve.{i}.{s.op}: reads clip_score, which needs a `clip:` section")
            if s.op in EMBEDDING_SIEVES:
                section = "vision" if s.embedding == "dino" else "clip"
                if getattr(self, section) is None:
                    column = "vis_embedding" if section == "vision" else "clip_image_embedding"
                    raise ConfigError(f"sieve.{i}.{s.op}.embedding: {s.embedding} reads {column}, which needs a "
                                      f"`{section}:` section")
            if s.op == "vas" and s.target.kind == "reference" and s.target.model not in (None, self.clip.model):
                raise ConfigError(f"sieve.{i}.vas.target.model: {s.target.model} is not the job's clip.model "
                                  f"{self.clip.model} (an S from another CLIP model is meaningless)")
        self._text_has_evidence()

    def _recaption_needs(self, key: str) -> None:
        missing = ([] if self.text is not None and self.text.engine is not None else
                   ["a `text:` section with an engine (text.engine + text.model) to write the recaptions"])
        missing += [] if self.clip is not None else ["a `clip:` section to embed and re-score them"]
        if missing:
            raise ConfigError(f"{key}: true needs " + " and ".join(missing))

    def _text_has_evidence(self) -> None:
        """rewrite / concat with no class head would silently run the text-only ablation (Tab. 5e)."""
        t = self.text
        if t is None or t.mode not in ("rewrite", "concat") or t.evidence == "none":
            return
        if self.vision is None:
            raise ConfigError(f"text.mode: {t.mode} takes class evidence from vision.head, but there is no `vision:` "
                              "section; add vision.head, or set text.evidence: none for the text-only ablation")
        if self.vision.head.kind == "none":
            raise ConfigError(f"text.mode: {t.mode} with vision.head.kind: none gives no class evidence; choose "
                              "vision.head.kind dino_linear | clip_zeroshot, or set text.evidence: none for the "
                              "text-only ablation")

    def stages(self) -> list[str]:
        return (["read", "decode"] + (["vision"] if self.vision else []) + (["clip"] if self.clip else [])
                + list(dict.fromkeys(f"sieve:{s.op}" for s in self.steps()))
                + (["text"] if self.text and self.text.mode != "none" else []) + ["write"])


def config_sha256(cfg: JobConfig) -> str:
    """Every parameter that shapes what a run writes (no runtime keys): a config's identity."""
    return sha256_of(params_of(cfg))


def params_of(model: BaseModel) -> dict[str, Any]:
    """A config section as JSON-able data without its RUNTIME-marked fields (recursively): what fingerprints hash."""
    out: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        if not is_runtime(field):
            out[name] = _plain(getattr(model, name))
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return params_of(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def sha256_of(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `dotted.key=value` overrides; values parse as YAML scalars (numbers, booleans, null, lists)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected dotted.key=value")
        dotted, value = item.split("=", 1)
        dotted = dotted.strip()
        try:
            parsed = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {dotted}: value is not valid YAML: {e}") from None
        set_dotted(raw, dotted, parsed, f"--set {dotted}")
    return raw


def set_dotted(raw: dict[str, Any], dotted: str, value: Any, where: str) -> None:
    """`raw[a][b][c] = value` for `dotted` = "a.b.c", creating sections on the way (also where a section was left
    empty, `vision:`); `where` starts the error message (`--set KEY`, `override KEY`)."""
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"{where}: empty key component")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key")
        elif e["type"] == "missing":
            lines.append(f"{key}: required key is missing")
        else:
            got = e.get("input")
            secret_like = any("key" in str(p) or "token" in str(p) for p in e["loc"])  # never echo a pasted secret
            shown = "" if isinstance(got, (dict, list)) or secret_like else f" (got {got!r})"
            lines.append(f"{key}: {e['msg']}{shown}")
    return "invalid config:\n  " + "\n  ".join(lines)


M = TypeVar("M", bound=BaseModel)


def validate_config(model: type[M], raw: Any, required: str) -> M:
    """`raw` (parsed YAML) as a `model`; ConfigError with one line per problem, each naming its dotted key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"invalid config: the top level must be a mapping with at least {required}")
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e)) from None


def parse_config(raw: Any) -> JobConfig:
    cfg = validate_config(JobConfig, raw, "`input` and `output`")
    cfg.cross_check()
    return cfg


def read_yaml(path: str | Path, overrides: list[str] | None = None) -> Any:
    """A config file's YAML with `--set` overrides applied; ConfigError when unreadable or not YAML."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror or e}") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {e}") from None
    return apply_overrides(raw, overrides or []) if isinstance(raw, dict) else raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> JobConfig:
    return parse_config(read_yaml(path, overrides))
