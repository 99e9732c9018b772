"""Throughput of the text rewrite stage: `TextRewriteOp` vs a bare loop over the same engine.

What is compared (same engine object, same prompts, same batch size, measured in this one run):

* bare loop — for every `--batch-size` rows: build the chat prompts (`normalize` + `build_messages`, exactly what the
  op sends) and call ``engine.generate``; nothing else (no validation, no columns, no accounting);
* op — ``TextRewriteOp(params, engine=engine)`` called on Arrow batches of `--rows-per-block` rows, as the runtime
  would: alive mask, normalisation, prompt de-duplication, engine calls cut at `batch_size`, output validation, the
  three output columns.

The ratio op / bare is printed (≥ 1.0: the op is as fast as the bare loop; it can exceed 1.0 only through prompt
de-duplication, which the synthetic corpus avoids by making every caption unique), with the share of the op's time
spent inside the engine. Engines: ``transformers`` (a tiny random Llama saved to a temp dir, real batched greedy
``generate`` on CPU) or ``fake`` (a scripted engine with a fixed cost per request, to expose the op's own overhead).

`compare(run_op, run_bare)` takes any two callables returning the number of rows they processed, so a pipeline-level
measurement (a `djray run` against the bare loop) can reuse it.

    python benchmarks/text_rewrite.py [--engine transformers|fake] [--rows 256] [--batch-size 64]
                                      [--rows-per-block 256] [--max-new-tokens 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pyarrow as pa  # noqa: E402

from djray import schema as S  # noqa: E402
from djray.ops.text.normalize import normalize  # noqa: E402
from djray.ops.text.params import TextParams  # noqa: E402
from djray.ops.text.prompts import CAPTION_CLOSE, CAPTION_OPEN, build_messages, load_template  # noqa: E402
from djray.ops.text.rewrite import TextRewriteOp, evidence_labels  # noqa: E402

WORDS = ("a dog cat red blue sofa beach lake mountain sunset photo of on the with at and two small large old new "
         "wooden house car street tree flower garden child man woman sitting running playing green").split()
LABELS = ["golden retriever", "tabby cat", "lakeside", "sports car", "studio couch", "daisy", "seashore"]


def corpus(n: int, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """Unique noisy captions (typos, repeated words) and evidence for about two rows in three."""
    rng = random.Random(seed)
    captions, evidence = [], []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 14))]
        if rng.random() < 0.3:
            j = rng.randrange(len(words))
            words.insert(j, words[j])  # repeated word
        if rng.random() < 0.3:
            w = words[0]
            words[0] = w[1] + w[0] + w[2:] if len(w) > 1 else w  # transposition typo
        captions.append(" ".join(words) + f" #{i}")
        evidence.append(rng.sample(LABELS, rng.randint(1, 2)) if rng.random() < 0.66 else [])
    return captions, evidence


class FakeEngine:
    """Scripted engine: answers the caption between the tags, costs `cost_s` per request (a stand-in for a server)."""

    name = "fake"

    def __init__(self, cost_s: float = 0.0):
        self.cost_s = cost_s

    def generate(self, conversations):
        if self.cost_s:
            time.sleep(self.cost_s * len(conversations))
        return [c[-1]["content"].split(CAPTION_OPEN, 1)[1].rsplit(CAPTION_CLOSE, 1)[0].capitalize() + "."
                for c in conversations]

    def describe(self):
        return {"engine": self.name, "cost_s": self.cost_s}

    def close(self):
        pass


class TimedEngine:
    """Wraps an engine and accumulates the seconds spent inside generate()."""

    def __init__(self, engine):
        self.engine, self.seconds, self.name = engine, 0.0, engine.name

    def generate(self, conversations):
        t0 = time.perf_counter()
        try:
            return self.engine.generate(conversations)
        finally:
            self.seconds += time.perf_counter() - t0

    def describe(self):
        return self.engine.describe()

    def close(self):
        pass


def tiny_lm(path: str, seed: int = 0) -> str:
    """Save a tiny random chat Llama + WordLevel tokenizer under `path` (no hub) and return it."""
    from djray._compat import patch_torchvision

    patch_torchvision()
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    t = load_template()
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([t.system, t.correction, t.evidence, t.reminder, " ".join(WORDS), " ".join(LABELS)],
                            trainers.WordLevelTrainer(special_tokens=["<unk>", "<pad>", "<s>", "<|im_start|>",
                                                                      "<|im_end|>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                   eos_token="<|im_end|>", additional_special_tokens=["<|im_start|>"])
    fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
                      bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id)
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def compare(run_op: Callable[[], int], run_bare: Callable[[], int], repeats: int = 3) -> dict[str, Any]:
    """Best-of-`repeats` rows/s of two callables (each returns rows processed), alternating to share drift."""
    times: dict[str, list[float]] = {"op": [], "bare": []}
    rows = {}
    for _ in range(repeats):
        for name, fn in (("bare", run_bare), ("op", run_op)):
            t0 = time.perf_counter()
            rows[name] = fn()
            times[name].append(time.perf_counter() - t0)
    if rows["op"] != rows["bare"]:
        raise RuntimeError(f"the two runs processed different row counts: {rows}")
    best = {k: min(v) for k, v in times.items()}
    return {"rows": rows["op"], "op_s": best["op"], "bare_s": best["bare"],
            "op_worst_s": max(times["op"]), "bare_worst_s": max(times["bare"]),
            "op_rows_per_s": rows["op"] / best["op"], "bare_rows_per_s": rows["bare"] / best["bare"],
            "ratio": best["bare"] / best["op"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", choices=("transformers", "fake"), default="transformers")
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rows-per-block", type=int, default=256)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--fake-cost-ms", type=float, default=0.0, help="fake engine: milliseconds per request")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pipeline", action="store_true",
                    help="also run the whole djray job (text_only, transformers) and compare its text phase")
    args = ap.parse_args(argv)

    captions, evidence = corpus(args.rows)
    tmp = tempfile.TemporaryDirectory(prefix="djray-bench-text-")
    if args.engine == "transformers":
        from djray.ops.text.engines import build_engine

        model = tiny_lm(tmp.name)
        params = TextParams(mode="rewrite", engine="transformers", model=model, batch_size=args.batch_size,
                            max_new_tokens=args.max_new_tokens)
        t0 = time.perf_counter()
        inner = build_engine(params, micro_batch=args.batch_size)
        print(f"engine: tiny random Llama (transformers, CPU), built in {time.perf_counter() - t0:.2f}s")
    else:
        params = TextParams(mode="rewrite", engine="openai", model="fake", endpoint="http://unused/v1",
                            batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
        inner = FakeEngine(args.fake_cost_ms / 1000)
        print(f"engine: scripted fake, {args.fake_cost_ms} ms per request")
    engine = TimedEngine(inner)
    template = load_template(params.prompt)
    table = pa.table({S.CAPTION_RAW: captions, S.VIS_EVIDENCE: pa.array(evidence, pa.list_(pa.string())),
                      S.REJECT_REASON: pa.nulls(len(captions), pa.string())})
    op_engine_s = []

    def run_bare() -> int:
        for start in range(0, len(captions), args.batch_size):
            convs = [build_messages(template, normalize(c), evidence_labels(e))
                     for c, e in zip(captions[start:start + args.batch_size], evidence[start:start + args.batch_size])]
            engine.generate(convs)
        return len(captions)

    def run_op() -> int:
        op = TextRewriteOp(params, engine=engine)  # fresh op: no cache carried between repeats
        op.setup()
        before, rows = engine.seconds, 0
        for start in range(0, table.num_rows, args.rows_per_block):
            out = op(table.slice(start, args.rows_per_block))
            rows += len(out[S.CAPTION])
        op_engine_s.append(engine.seconds - before)
        return rows

    engine.generate([build_messages(template, "warm up")])  # first-call costs out of both measurements
    r = compare(run_op, run_bare, args.repeats)
    op = TextRewriteOp(params, engine=inner)
    op.setup()
    out = op(table)
    sources = {k: v for k, v in op.stats.items() if not k.startswith(("cache", "engine"))}
    print(f"rows {r['rows']}, batch_size {args.batch_size}, rows_per_block {args.rows_per_block}, "
          f"max_new_tokens {args.max_new_tokens}, best of {args.repeats}")
    print(f"  bare loop  {r['bare_s']:8.3f}s  {r['bare_rows_per_s']:9.1f} rows/s   (worst run {r['bare_worst_s']:.3f}s)")
    print(f"  op         {r['op_s']:8.3f}s  {r['op_rows_per_s']:9.1f} rows/s   (worst run {r['op_worst_s']:.3f}s; "
          f"engine {min(op_engine_s):.3f}s, op overhead {r['op_s'] - min(op_engine_s):.3f}s)")
    print(f"  ratio op/bare = {r['ratio']:.3f}")
    print(f"  outcome of one op pass: {dict(sorted(sources.items()))}  (random weights: gibberish falls back)"
          if args.engine == "transformers" else f"  outcome of one op pass: {dict(sorted(sources.items()))}")
    assert len(out[S.CAPTION]) == len(captions)
    if args.pipeline and args.engine == "transformers":
        pipeline_vs_bare(captions, model, engine, template, args)
    tmp.cleanup()
    return 0


def pipeline_vs_bare(captions: list[str], model: str, engine: Any, template: Any, args: argparse.Namespace) -> None:
    """The text phase of a real `djray run` (text_only: the correction prompt only, no vision) against the bare loop
    over the same prompts and batch size. The phase includes reading the staged rows, the actor's model load and
    writing the caption patches: everything the stage costs inside the job."""
    import ray

    from djray import pipeline
    from djray.config import parse_config
    from bench_corpus import write_caption_shards

    work = tempfile.mkdtemp(prefix="djray-bench-text-job-")
    write_caption_shards(os.path.join(work, "in"), captions, shards=2)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    cfg = parse_config({"input": {"path": os.path.join(work, "in"), "format": "webdataset"},
                        "output": {"path": os.path.join(work, "out")},
                        "text": {"mode": "text_only", "engine": "transformers", "model": model,
                                 "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens}})
    manifest = pipeline.run(cfg, progress=False, log=lambda m: None)
    ray.shutdown()
    text_s = manifest["run"]["phases_s"]["text_s"]
    t0 = time.perf_counter()
    for start in range(0, len(captions), args.batch_size):
        engine.generate([build_messages(template, normalize(c), []) for c in captions[start:start + args.batch_size]])
    bare_s = time.perf_counter() - t0
    print(f"pipeline: djray text phase {text_s:.3f}s ({len(captions) / text_s:.1f} rows/s, model load included) vs "
          f"bare loop {bare_s:.3f}s ({len(captions) / bare_s:.1f} rows/s): ratio {bare_s / text_s:.3f}")


if __name__ == "__main__":
    sys.exit(main())
