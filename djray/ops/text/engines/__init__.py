"""LLM engines for the text branch: one interface, three back-ends, imported lazily.

    engine.generate(conversations: list[list[dict]]) -> list[str | None]

`conversations` is a batch of chat conversations (``[{"role": "system", "content": ...}, {"role": "user", ...}]``);
the result has one entry per conversation, in order:

* ``str``       the assistant's reply (raw; the op cleans and validates it);
* `Truncated`   a ``str`` subclass: the reply stopped at max_new_tokens (validation rejects it: a cut sentence);
* ``None``      this one request failed for a reason specific to it (e.g. HTTP 400: prompt too long); the row falls
                back with ``engine_error``.

A failure that is not about one request (server unreachable after retries, authentication refused, model missing,
CUDA error) raises `EngineUnavailable` (or the back-end's own exception): the op lets it propagate, the shard fails
cleanly and a re-run resumes it. No engine ever turns a systemic failure into empty captions.

Engines: ``openai`` (`engines/openai.py`, any OpenAI-compatible server, chat route), ``transformers`` (`hf.py`,
batched greedy ``generate``), ``vllm`` (`vllm.py`, offline ``vllm.LLM`` inside the actor). Temperature is always 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from djray.ops.text.params import TextParams


class EngineUnavailable(RuntimeError):
    """The engine cannot serve requests (after retries, or a configuration/auth error). Fails the shard."""


class Truncated(str):
    """A generation that stopped because it reached max_new_tokens."""


class Engine(Protocol):
    name: str

    def generate(self, conversations: list[list[dict[str, str]]]) -> list[str | None]: ...

    def describe(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def missing_extra(package: str, extra: str) -> ImportError:
    return ImportError(f"text.engine needs the '{package}' package: pip install 'djray[{extra}]'"
                       + (" (on a GPU image; vllm does not install on CPU-only machines)" if extra == "vllm" else ""))


def build_engine(params: TextParams, device: str | None = None, **options: Any) -> Engine:
    """Build the engine named by `params.engine` (heavy imports happen here, in the worker)."""
    if params.engine == "openai":
        from djray.ops.text.engines.openai import OpenAIChatEngine

        return OpenAIChatEngine(endpoint=params.endpoint, model=params.model, api_key_env=params.api_key_env,
                                max_new_tokens=params.max_new_tokens, concurrency=params.concurrency,
                                timeout_s=params.timeout_s, max_retries=params.max_retries, **options)
    if params.engine == "transformers":
        from djray.ops.text.engines.hf import HFEngine

        return HFEngine(model=params.model, max_new_tokens=params.max_new_tokens,
                        device=device or ("cuda" if params.resources.num_gpus > 0 else "cpu"), **options)
    if params.engine == "vllm":
        from djray.ops.text.engines.vllm import VLLMEngine

        return VLLMEngine(model=params.model, max_new_tokens=params.max_new_tokens,
                          num_gpus=params.resources.num_gpus, **options)
    raise ValueError(f"text.engine {params.engine!r} is not an engine")
