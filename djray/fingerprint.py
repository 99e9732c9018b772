"""Three fingerprints of a run, so that a new selection never pays for the pixels again.

* signals   — what phase A computed: the input listing (shard names and sizes; the input root is left out, so a
              corpus may move), the input columns, decode, the vision model (weights, image size, aggregation,
              head, precision), everything but patch selection, and the clip section (model, weights, precision).
* selection — signals + the `sieve:` steps + patch selection (vision ratio, strategy, seed, strata, mix_alpha),
              + the signals fingerprint of each reference image set a step embeds (vas `target.images`: its listing,
              decode and clip), so new reference images re-select.
* output    — selection + the text branch + output compression.

Phase A is skipped when every shard is sealed under the signals fingerprint; a phase-B step is skipped when its
marker exists under the selection fingerprint; phase C rewrites a shard whose done marker names another output
fingerprint. Only keys that shape what is written are hashed (config fields marked RUNTIME are left out).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from djray.config import JobConfig, params_of, sha256_of
from djray.ops.vision.params import VisionParams


@dataclass(frozen=True)
class Fingerprints:
    signals: str
    selection: str
    output: str

    def as_dict(self) -> dict[str, str]:
        return {"signals_sha256": self.signals, "selection_sha256": self.selection, "output_sha256": self.output}


def _vision_signals(v: VisionParams) -> dict[str, Any]:
    params = params_of(v)
    random_init = v.weights == "random" or (v.head.kind != "none" and v.head.weights == "random")
    for name in VisionParams.SELECTION_FIELDS:
        if name == "seed" and random_init:
            continue  # the seed also initialises random weights: then it shapes the signals too
        params.pop(name)
    return params


def signals_sha256(cfg: JobConfig, listing: list[tuple[str, int]]) -> str:
    inputs = params_of(cfg.input)
    inputs.pop("path")
    return sha256_of({
        "listing": [[name, size] for name, size in listing],
        "input": inputs,
        "decode": params_of(cfg.decode),
        "vision": _vision_signals(cfg.vision) if cfg.vision else None,
        **({"clip": params_of(cfg.clip)} if cfg.clip else {}),  # absent key: fingerprints of clip-less runs unchanged
    })


def selection_sha256(cfg: JobConfig, signals: str, references: dict[int, str] | None = None) -> str:
    patches = {n: getattr(cfg.vision, n) for n in VisionParams.SELECTION_FIELDS} if cfg.vision else None
    return sha256_of({"signals": signals, "steps": _steps(cfg, references), "patches": patches})


def _steps(cfg: JobConfig, references: dict[int, str] | None) -> list[dict[str, Any]]:
    """Each step's parameters; a step that embeds reference images also its reference set's fingerprint (absent
    key otherwise: fingerprints of selections without one are unchanged)."""
    refs = references or {}
    return [{**params_of(s), **({"reference": refs[i]} if i in refs else {})} for i, s in enumerate(cfg.steps())]


def step_sha256s(cfg: JobConfig, signals: str, references: dict[int, str] | None = None) -> list[str]:
    """One fingerprint per phase-B step: the signals and the steps up to and including it. A new selection that
    keeps the first steps (say, another fraction for the last sieve) reuses their finished decisions."""
    params = _steps(cfg, references)
    return [sha256_of({"signals": signals, "steps": params[: i + 1]}) for i in range(len(params))]


def output_sha256(cfg: JobConfig, selection: str) -> str:
    text = params_of(cfg.text) if cfg.text and cfg.text.mode != "none" else None
    return sha256_of({"selection": selection, "text": text, "compression": cfg.output.compression})


def fingerprints(cfg: JobConfig, listing: list[tuple[str, int]], references: dict[int, str] | None = None
                 ) -> Fingerprints:
    """`references`: step index → signals fingerprint of the reference images that step embeds."""
    signals = signals_sha256(cfg, listing)
    selection = selection_sha256(cfg, signals, references)
    return Fingerprints(signals, selection, output_sha256(cfg, selection))
