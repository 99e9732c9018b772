"""Model weight sources: where a model's weights come from, checked before any work and fetched once per node.

Source syntax (one string, used by `vision.weights` and `vision.head.weights`):

* ``hub`` or ``hub:TAG``  — the library's own download (timm / open_clip / DINO's URLs). Needs network at run time;
  offline only the syntax is checked.
* ``file:PATH``          — a local (or shared-filesystem) file: ``.safetensors``, ``.pth``, ``.pt`` or ``.bin``.
* ``s3://bucket/key``    — an object fetched once per node into a cache directory keyed by the URI hash.
* ``random``             — seeded random initialisation (tests, smoke runs). Never for real governance.

This module imports no other djray module (ARCHITECTURE §3: `models` import only `_compat`). torch, safetensors
and pyarrow are imported lazily so that config validation stays light.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
CACHE_ENV = "DJRAY_WEIGHTS_CACHE"


@dataclass(frozen=True)
class Source:
    kind: str  # "hub" | "file" | "s3" | "random"
    location: str = ""  # hub tag, local path, or s3 URI

    def __str__(self) -> str:
        if self.kind == "random":
            return "random"
        if self.kind == "hub":
            return f"hub:{self.location}" if self.location else "hub"
        if self.kind == "file":
            return f"file:{self.location}"
        return self.location


def parse_source(s: str) -> Source:
    """Parse a weight source string; raise ValueError on bad syntax (no I/O)."""
    if not isinstance(s, str) or not s.strip():
        raise ValueError(f"empty weight source {s!r} (use hub, file:PATH, s3://bucket/key or random)")
    s = s.strip()
    if s == "random":
        return Source("random")
    if s == "hub":
        return Source("hub")
    if s.startswith("hub:"):
        tag = s[len("hub:") :]
        if not tag or any(c.isspace() for c in tag):
            raise ValueError(f"bad hub tag in weight source {s!r}")
        return Source("hub", tag)
    if s.startswith("file:"):
        path = s[len("file:") :]
        if path.startswith("//"):  # tolerate file:///abs/path
            path = path[2:]
        if not path:
            raise ValueError(f"weight source {s!r} names no file (use file:/path/to/weights.pth)")
        return Source("file", os.path.expanduser(path))
    if s.startswith("s3://"):
        parsed = urlparse(s)
        if not parsed.netloc or not parsed.path.strip("/"):
            raise ValueError(f"weight source {s!r} needs a bucket and a key (s3://bucket/key)")
        return Source("s3", s)
    raise ValueError(f"unknown weight source {s!r} (use hub, hub:TAG, file:PATH, s3://bucket/key or random)")


DEFAULT_S3_RETRIES = 10  # attempts per request: carries a job through a store that throttles one request in five
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_REQUEST_TIMEOUT_S = 30.0


def s3_filesystem(endpoint_url: str | None = None, region: str | None = None, *, retries: int = DEFAULT_S3_RETRIES,
                  connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
                  request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S):
    """A pyarrow S3FileSystem honouring explicit args, then AWS_ENDPOINT_URL(_S3) / AWS_REGION from the env.

    Every request retries throttling (503 SlowDown), 500s, timeouts and connection resets up to `retries` attempts
    with exponential backoff from 25 ms: the AWS SDK's default retry strategy (pyarrow's default is 3 attempts, which
    a store under load exhausts). Not the SDK's "standard" mode: its per-client retry budget runs dry after about
    100 throttled requests and then no request of the process is retried (docs/design.md, "Object storage").
    `connect_timeout_s` bounds a connection attempt; `request_timeout_s` is the SDK's request timeout (on Linux the SDK
    applies it as the longest time a transfer may make no progress).
    """
    import pyarrow.fs as pafs

    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    kwargs: dict[str, Any] = {
        "retry_strategy": pafs.AwsDefaultS3RetryStrategy(max_attempts=retries - 1),  # the SDK counts retries here
        "connect_timeout": connect_timeout_s,
        "request_timeout": request_timeout_s,
    }
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme or "https"
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


def _check_suffix(path: str, shown: str) -> None:
    if not path.lower().endswith(WEIGHT_SUFFIXES):
        raise ValueError(f"{shown}: unsupported weights file type (expected one of {', '.join(WEIGHT_SUFFIXES)})")


def check_source(s: str, endpoint_url: str | None = None, region: str | None = None) -> Source:
    """Validate a source before any work: syntax always; file exists and is readable; s3 object exists (HEAD).

    Raises ValueError with a message naming the problem. `hub` is not checked offline beyond its syntax.
    """
    src = parse_source(s)
    if src.kind == "file":
        path = src.location
        if not os.path.exists(path):
            raise ValueError(f"file not found: {path}")
        if not os.path.isfile(path):
            raise ValueError(f"not a regular file: {path}")
        if not os.access(path, os.R_OK):
            raise ValueError(f"file not readable: {path}")
        _check_suffix(path, path)
    elif src.kind == "s3":
        import pyarrow.fs as pafs

        _check_suffix(src.location, src.location)
        try:
            info = s3_filesystem(endpoint_url, region).get_file_info(src.location[len("s3://") :])
        except Exception as e:  # noqa: BLE001 - any transport/auth error is a validation failure
            raise ValueError(f"cannot stat {src.location}: {e}") from e
        if info.type == pafs.FileType.NotFound:
            raise ValueError(f"object not found: {src.location}")
        if info.type != pafs.FileType.File:
            raise ValueError(f"not an object: {src.location}")
    return src


def default_cache_dir() -> str:
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "djray", "weights")


def fetch(source: str | Source, cache_dir: str | None = None, endpoint_url: str | None = None,
          region: str | None = None) -> str:
    """Return a local path for a file: or s3:// source. S3 objects are downloaded once per node.

    The cache entry is ``cache_dir/<sha256(uri)[:24]>/<basename>``; a download goes to a unique temporary sibling
    and is renamed into place, so concurrent workers on one node never see a partial file.
    """
    src = parse_source(source) if isinstance(source, str) else source
    if src.kind == "file":
        check_source(str(src))
        return src.location
    if src.kind != "s3":
        raise ValueError(f"fetch() needs a file: or s3:// source, got {src}")
    cache_dir = cache_dir or default_cache_dir()
    digest = hashlib.sha256(src.location.encode()).hexdigest()[:24]
    target_dir = os.path.join(cache_dir, digest)
    target = os.path.join(target_dir, os.path.basename(urlparse(src.location).path) or "weights")
    if os.path.isfile(target):
        return target
    os.makedirs(target_dir, exist_ok=True)
    tmp = f"{target}.tmp-{uuid.uuid4().hex}"
    fs = s3_filesystem(endpoint_url, region)
    try:
        with fs.open_input_stream(src.location[len("s3://") :]) as fin, open(tmp, "wb") as fout:
            while True:
                chunk = fin.read(16 << 20)
                if not chunk:
                    break
                fout.write(chunk)
        os.replace(tmp, target)
    except FileNotFoundError as e:
        raise ValueError(f"object not found: {src.location}") from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def load_state_dict(path: str) -> dict[str, Any]:
    """Load a checkpoint file into a dict (tensors, possibly nested: DINO keeps `teacher`/`student` dicts).

    `.safetensors` via safetensors; `.pth`/`.pt`/`.bin` via ``torch.load(weights_only=True)`` (argparse.Namespace is
    allowed, as DINO's full checkpoints store their `args`). Raises ValueError on unreadable or foreign content.
    """
    import argparse

    import torch

    if not os.path.isfile(path):
        raise ValueError(f"file not found: {path}")
    low = path.lower()
    if not low.endswith(WEIGHT_SUFFIXES):
        raise ValueError(f"{path}: unsupported weights file type (expected one of {', '.join(WEIGHT_SUFFIXES)})")
    try:
        if low.endswith(".safetensors"):
            from safetensors.torch import load_file

            obj: Any = load_file(path, device="cpu")
        else:
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt/garbage files raise many different types (UnicodeDecodeError…)
        raise ValueError(f"{path}: not a readable weights file ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return obj


def sha256_file(path: str, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def state_sha256(state: dict[str, Any]) -> str:
    """Checksum of a module's parameters (names, dtypes, shapes, bytes): identifies hub and random weights too."""
    import torch

    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
