"""Parameters of the text branch (config section ``text``). Names are fixed by the product spec.

    text:
      mode: rewrite                  # none | text_only | concat | rewrite
      evidence: vision               # vision: P_O from vis_evidence (needs vision.head) | none: the text-only
                                     # ablation on purpose (Tab. 5e), rewrite/concat never see class evidence
      engine: vllm                   # vllm | openai | transformers (needed by rewrite; optional for text_only)
      model: Qwen/Qwen2.5-7B-Instruct
      endpoint: http://llm:8000/v1   # openai only: base URL including /v1
      api_key_env: OPENAI_API_KEY    # NAME of the env var holding the key (never the key); unset var → no auth
      prompt: null                   # versioned template (YAML); null → the packaged caption_rewrite_v1.yaml
      max_new_tokens: 96
      batch_size: 256                # rows per engine call (openai: requests submitted together)
      concurrency: 16                # openai: requests in flight per actor
      timeout_s: 60                  # openai: per request (connect / each read)
      max_retries: 4                 # openai: retries on connection errors, timeouts, 408, 429, 5xx
      temperature: 0                 # fixed: greedy decoding, deterministic output
      resources: {num_gpus: 1, num_cpus: 1, pool_size: 1}
"""

from __future__ import annotations

import os
import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import ConfigDict, Field, field_validator, model_validator

from djray.ops.base import RUNTIME, Params, ResourcesParams

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LLM_MODES = ("text_only", "rewrite")


class TextParams(Params):
    # A mistyped api_key_env may hold a pasted key: never echo input values in validation errors.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    mode: Literal["none", "text_only", "concat", "rewrite"] = "rewrite"
    evidence: Literal["vision", "none"] = "vision"
    engine: Literal["vllm", "openai", "transformers"] | None = None
    model: str | None = None
    endpoint: str | None = Field(None, json_schema_extra=RUNTIME)
    api_key_env: str | None = Field("OPENAI_API_KEY", json_schema_extra=RUNTIME)
    prompt: str | None = None
    max_new_tokens: int = Field(96, ge=1, le=4096)
    batch_size: int = Field(256, ge=1, json_schema_extra=RUNTIME)
    # one actor, one CPU unless set (an LLM engine on GPU: num_gpus: 1, pool_size: the GPUs to use)
    resources: ResourcesParams = Field(ResourcesParams(num_gpus=0.0, num_cpus=1.0, pool_size=1),
                                       json_schema_extra=RUNTIME)
    concurrency: int = Field(16, ge=1, le=1024, json_schema_extra=RUNTIME)
    timeout_s: float = Field(60.0, gt=0, json_schema_extra=RUNTIME)
    max_retries: int = Field(4, ge=0, le=20, json_schema_extra=RUNTIME)
    temperature: float = 0.0

    @field_validator("temperature")
    @classmethod
    def _greedy(cls, v: float) -> float:
        if v != 0:
            raise ValueError("text.temperature is fixed at 0 (greedy decoding, so a re-run writes the same captions)")
        return 0.0

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not ENV_NAME_RE.match(v):
            # Do not echo the value: it may be a pasted key.
            raise ValueError("text.api_key_env must be the NAME of an environment variable (e.g. OPENAI_API_KEY) "
                             "that holds the key, never the key itself")
        return v

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"text.endpoint {v!r} must be an http(s) base URL such as http://host:8000/v1")
        if parts.username or parts.password:
            raise ValueError("text.endpoint must not contain credentials; put the key in the environment variable "
                             "named by text.api_key_env")
        return v.strip().rstrip("/")

    @model_validator(mode="after")
    def _engine_needs(self) -> TextParams:
        if self.mode == "rewrite" and (self.engine is None or not self.model):
            raise ValueError("text.mode rewrite needs text.engine (vllm | openai | transformers) and text.model")
        if self.engine is not None and not self.model:
            raise ValueError(f"text.engine {self.engine} needs text.model")
        if self.model and self.engine is None and self.mode in LLM_MODES:
            raise ValueError("text.model is set but text.engine is not (vllm | openai | transformers)")
        if self.engine == "openai" and not self.endpoint:
            raise ValueError("text.engine openai needs text.endpoint (the server's base URL, e.g. http://host:8000/v1)")
        return self

    @property
    def uses_engine(self) -> bool:
        """True when this configuration calls an LLM (rewrite, or text_only with an engine)."""
        return self.mode in LLM_MODES and self.engine is not None

    def validate_sources(self, prefix: str = "text") -> None:
        """Check the prompt template and a local model path before any data is read (``djray validate``).

        Raises ValueError listing each problem with its config key, e.g. ``text.prompt: file not found: /x.yaml``.
        Hub model names and endpoints are not contacted here.
        """
        from djray.ops.text.prompts import load_template

        problems = []
        if self.mode in LLM_MODES:
            try:
                load_template(self.prompt)
            except (OSError, ValueError) as e:
                problems.append(f"{prefix}.prompt: {e}")
        if self.uses_engine and self.engine in ("transformers", "vllm") and _looks_local(self.model):
            path = os.path.expanduser(self.model)
            if not os.path.isdir(path):
                problems.append(f"{prefix}.model: directory not found: {path}")
            elif not os.path.isfile(os.path.join(path, "config.json")):
                problems.append(f"{prefix}.model: {path} has no config.json (not a saved transformers model)")
        if problems:
            raise ValueError("\n".join(problems))


def _looks_local(model: str | None) -> bool:
    return bool(model) and (model.startswith(("/", "./", "../", "~")) or os.path.exists(model))
