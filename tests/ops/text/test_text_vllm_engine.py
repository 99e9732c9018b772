"""The vLLM engine through the op. Needs a CUDA GPU and the `vllm` extra (GPU images only): skipped elsewhere."""

from __future__ import annotations

import pyarrow as pa
import pytest

from djray import schema as S
from djray.ops.text.params import TextParams
from djray.ops.text.rewrite import TEXT_FALLBACK_REASON, TextRewriteOp
from djray.ops.text.validate import Fallback

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def vllm_lm_dir(tmp_path_factory, chat_tokenizer_factory):
    pytest.importorskip("vllm")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a CUDA device")
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("vllm_lm")
    tok = chat_tokenizer_factory()
    # head_dim 64: vLLM's attention kernels do not support the tiny head sizes of the CPU fixture
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      torch_dtype="bfloat16")
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_vllm_rewrite_end_to_end(vllm_lm_dir):
    p = TextParams(mode="rewrite", engine="vllm", model=vllm_lm_dir, max_new_tokens=16, batch_size=64,
                   resources={"num_gpus": 1})
    op = TextRewriteOp(p, engine_options={"gpu_memory_utilization": 0.3, "max_model_len": 1024,
                                          "enforce_eager": True})
    op.setup()
    captions = [f"a dgo on teh beach number {i}" for i in range(40)] + ["", "rejected"]
    b = pa.table({S.CAPTION_RAW: captions,
                  S.VIS_EVIDENCE: pa.array([["golden retriever"]] * 42, pa.list_(pa.string())),
                  S.REJECT_REASON: pa.array([None] * 41 + [S.Reason.CORRUPT_IMAGE], pa.string())})
    out = op(b)
    cap, src, why = (out[k].to_pylist() for k in (S.CAPTION, S.CAPTION_SOURCE, TEXT_FALLBACK_REASON))
    for i in range(40):
        assert src[i] in ("rewrite", "fallback") and cap[i]
        assert (why[i] is None) if src[i] == "rewrite" else (why[i] in Fallback.ALL)
    assert (src[40], why[40]) == ("original", Fallback.EMPTY_INPUT)
    assert (cap[41], src[41], why[41]) == (None, None, None)
    assert op.engine.stats["requests"] == 40
    # greedy decoding: the same prompt gets the same reply
    assert op.engine.generate([[{"role": "user", "content": "a cat"}]]) == \
        op.engine.generate([[{"role": "user", "content": "a cat"}]])
