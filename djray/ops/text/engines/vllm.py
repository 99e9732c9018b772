"""vLLM engine: the offline ``vllm.LLM`` inside the actor, fed whole batches of conversations.

``LLM.chat(list_of_conversations, sampling_params=SamplingParams(temperature=0, max_tokens=N), use_tqdm=False)``
applies the model's chat template to every conversation and schedules them all at once (continuous batching), so
the op passes its whole `batch_size` per call. Results come back in input order; ``outputs[0].finish_reason ==
"length"`` marks a `Truncated` reply. Any exception from vLLM (CUDA OOM, engine death) propagates as
`EngineUnavailable`: the shard fails and is resumed, never written with empty captions.

vLLM is an optional extra for GPU images (``pip install 'djray[vllm]'``); it pins its own CUDA torch and cannot be
installed next to the CPU torch of the default environment. Tensor parallelism = ``resources.num_gpus`` when ≥ 2.
"""

from __future__ import annotations

from typing import Any

from djray.ops.text.engines import EngineUnavailable, Truncated, missing_extra


class VLLMEngine:
    name = "vllm"

    def __init__(self, model: str, max_new_tokens: int = 96, num_gpus: float = 1.0, seed: int = 0,
                 **llm_kwargs: Any):
        try:
            import vllm
            from vllm import LLM, SamplingParams
        except ImportError as e:
            raise missing_extra("vllm", "vllm") from e
        self.model_name, self.max_new_tokens = model, max_new_tokens
        tp = int(num_gpus) if num_gpus >= 2 else 1
        kwargs = {"tensor_parallel_size": tp, "seed": seed, "dtype": "auto"}
        kwargs.update(llm_kwargs)
        self.llm = LLM(model=model, **kwargs)
        self.sampling = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, n=1)
        self.version = getattr(vllm, "__version__", "unknown")
        self.kwargs = kwargs
        self.stats = {"requests": 0}

    def generate(self, conversations: list[list[dict[str, str]]]) -> list[str | None]:
        if not conversations:
            return []
        try:
            outputs = self.llm.chat(conversations, sampling_params=self.sampling, use_tqdm=False)
        except Exception as e:  # noqa: BLE001 - any engine failure fails the shard, resumably
            raise EngineUnavailable(f"vllm generation failed: {type(e).__name__}: {e}") from e
        if len(outputs) != len(conversations):
            raise EngineUnavailable(f"vllm returned {len(outputs)} outputs for {len(conversations)} prompts")
        result: list[str | None] = []
        for o in outputs:
            if not o.outputs:
                result.append(None)
                continue
            c = o.outputs[0]
            result.append(Truncated(c.text) if c.finish_reason == "length" else c.text)
        self.stats["requests"] += len(conversations)
        return result

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "model": self.model_name, "vllm_version": self.version,
                "max_new_tokens": self.max_new_tokens, **{k: v for k, v in self.kwargs.items()}}

    def close(self) -> None:
        self.llm = None
