"""transformers engine: batched greedy ``generate`` of a causal LM on CPU or GPU, from a local directory or a hub
name (``HF_HUB_OFFLINE=1`` keeps it local).

Prompts are rendered with the tokenizer's chat template (``add_generation_prompt=True``), left-padded and run in
micro-batches of `micro_batch` conversations sorted by length (less padding); the new tokens after the prompt are
decoded with ``skip_special_tokens``. A reply without an end-of-sequence token that used all `max_new_tokens` is
returned as `Truncated`. Precision: bf16 on CUDA, fp32 on CPU.
"""

from __future__ import annotations

import logging
from typing import Any

from djray.ops.text.engines import Truncated, missing_extra

log = logging.getLogger(__name__)


class HFEngine:
    name = "transformers"

    def __init__(self, model: str, max_new_tokens: int = 96, device: str = "cpu", micro_batch: int = 64,
                 dtype: str | None = None):
        from djray._compat import patch_torchvision

        patch_torchvision()  # transformers may import torchvision (CUDA-linked wheels on CPU torch)
        try:
            import torch
            import transformers
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as e:
            raise missing_extra("transformers", "text") from e
        if device.startswith("cuda") and not torch.cuda.is_available():
            log.warning("text.resources.num_gpus > 0 but no CUDA device is visible; running the LM on CPU")
            device = "cpu"
        self.model_name, self.max_new_tokens, self.device, self.micro_batch = model, max_new_tokens, device, micro_batch
        if dtype:
            torch_dtype = getattr(torch, dtype)
        else:
            torch_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        transformers.utils.logging.disable_progress_bar()  # no per-actor weight-loading bars in job logs
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"text.model {model}: the tokenizer has no chat template (use an instruction-tuned model)")
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
        kw = {"dtype": torch_dtype} if (major, minor) >= (4, 56) else {"torch_dtype": torch_dtype}
        self.model = AutoModelForCausalLM.from_pretrained(model, **kw).to(device).eval()
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        self.dtype = str(torch_dtype).replace("torch.", "")
        self.stats = {"requests": 0, "generated_tokens": 0}

    def render(self, conversation: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)

    def generate(self, conversations: list[list[dict[str, str]]]) -> list[str | None]:
        import torch

        texts = [self.render(c) for c in conversations]
        lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        order = sorted(range(len(texts)), key=lambda i: lengths[i])
        out: list[str | None] = [None] * len(texts)
        for start in range(0, len(order), self.micro_batch):
            idx = order[start:start + self.micro_batch]
            enc = self.tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True,
                                 add_special_tokens=False).to(self.device)
            with torch.inference_mode():
                gen = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                          num_beams=1, pad_token_id=self.tokenizer.pad_token_id)
            new = gen[:, enc["input_ids"].shape[1]:].cpu()
            for row, i in enumerate(idx):
                ids = new[row].tolist()
                ended = any(t in self.eos_ids for t in ids)
                if ended:
                    ids = ids[:next(k for k, t in enumerate(ids) if t in self.eos_ids)]
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                out[i] = text if ended or len(ids) < self.max_new_tokens else Truncated(text)
                self.stats["generated_tokens"] += len(ids)
        self.stats["requests"] += len(texts)
        return out

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "model": self.model_name, "device": self.device, "dtype": self.dtype,
                "max_new_tokens": self.max_new_tokens}

    def close(self) -> None:
        self.model = None
