"""`precision: auto` — the autocast precision of a model actor, chosen on the machine it runs on.

* CUDA: bf16 (tensor cores; scores, softmax and the embedding stay fp32 where the op asks for it).
* CPU with AMX (`amx_bf16` in /proc/cpuinfo): bf16, no probe. Measured on such a Xeon: the ViT-S/16 op 2.9x faster
  in bf16 than in fp32 (benchmarks/RESULTS.md).
* CPU with no bf16 instruction at all (x86 without `avx512_bf16`, `avx_ne_convert` or AMX; ARM without `bf16`): fp32,
  no probe. There, oneDNN has no bf16 dot product: bf16 operands are widened to fp32 and multiplied in fp32, so the
  conversion is pure extra work (measured: 6x slower than fp32 on an AVX2-only AMD EPYC, where even the probe cost
  2-4 s of every actor's start).
* any other CPU (bf16 instructions without AMX: `avx512_bf16`'s dot product, `avx_ne_convert`, ARM's `bf16`):
  a short probe at actor set-up — a warm-up, then two timed calls of one transformer block of the real model
  (`block_probe`: a ViT spends its time in identical blocks, and one block costs 1/depth of a forward) in fp32 and in
  bf16; the faster wins. This project has measured bf16 2.7x faster and 1.5x slower than fp32 on AVX-512-BF16 CPUs
  without AMX: only a measurement on the machine at hand says which. A machine whose flags cannot be read is probed
  too.

Machines differ from one run to the next, so nothing here is a belief about one CPU: the choice and the reason are
returned for the manifest's model record (`precision`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

NATIVE_BF16_FLAGS = ("amx_bf16",)  # bf16 matrix units: bf16 without a probe
BF16_INSTRUCTION_FLAGS = ("avx512_bf16", "avx_ne_convert", "bf16")  # x86 dot product, x86 conversions, ARM: probe


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags of this machine: x86's `flags`, ARM's `Features` (empty where neither can be read)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def probe(run: Callable[[str], Any], batches: int = 2) -> dict[str, float]:
    """Seconds per call of `run(precision)` for fp32 and bf16, after one warm-up call each (best of `batches`)."""
    out: dict[str, float] = {}
    for precision in ("fp32", "bf16"):
        run(precision)
        times = []
        for _ in range(batches):
            t0 = time.perf_counter()
            run(precision)
            times.append(time.perf_counter() - t0)
        out[precision] = min(times)
    return out


def block_probe(block: Any, tokens: int, width: int, device: str, batch: int = 8,
                seq_first: bool = False) -> Callable[[str], None]:
    """`run(precision)` for `probe`: `block` (one transformer block of the model) on `batch` random sequences of
    `tokens` x `width`, under inference mode and the precision's autocast (`seq_first`: the block takes (N, B, D))."""
    import torch

    from djray.models.dino import autocast

    shape = (tokens, batch, width) if seq_first else (batch, tokens, width)
    inputs: list[Any] = []  # made at the first call: where no probe runs (CUDA, AMX), nothing is allocated

    def run(precision: str) -> None:
        if not inputs:
            inputs.append(torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(device))
        with torch.inference_mode(), autocast(inputs[0].device.type, precision):
            block(inputs[0])

    return run


def resolve_precision(requested: str, device: str, run: Callable[[str], Any] | None = None,
                      flags: set[str] | None = None) -> dict[str, Any]:
    """{"requested", "chosen", "why"[, "probe_s"]}: `requested` unless it is "auto"; `run(precision)` runs one probe
    call of the real model (a block or a small batch; needed only on a CPU with bf16 instructions but no AMX)."""
    if requested != "auto":
        return {"requested": requested, "chosen": requested, "why": "set in the config"}
    if device == "cuda":
        return {"requested": "auto", "chosen": "bf16", "why": "CUDA device"}
    flags = cpu_flags() if flags is None else flags
    native = [f for f in NATIVE_BF16_FLAGS if f in flags]
    if native:
        return {"requested": "auto", "chosen": "bf16", "why": f"CPU has bf16 matrix units ({', '.join(native)})"}
    if flags and not any(f in flags for f in BF16_INSTRUCTION_FLAGS):
        names = ", ".join(NATIVE_BF16_FLAGS + BF16_INSTRUCTION_FLAGS)
        return {"requested": "auto", "chosen": "fp32", "why": f"CPU without bf16 instructions (none of {names})"}
    if run is None:
        return {"requested": "auto", "chosen": "fp32", "why": "CPU without AMX, no probe possible"}
    seconds = probe(run)
    chosen = "bf16" if seconds["bf16"] < seconds["fp32"] else "fp32"
    return {"requested": "auto", "chosen": chosen, "probe_s": seconds,
            "why": f"CPU without AMX; probe: fp32 {seconds['fp32']:.3f}s, bf16 {seconds['bf16']:.3f}s "
                   "per call"}
