"""Checkpoint layout, per-worker state and the metrics file.

    output.path/checkpoints/latest                      DeepSpeed's pointer (written last by save_checkpoint)
    output.path/checkpoints/step_NNNNNNNN/              DeepSpeed: model / optimizer / scheduler (+ ZeRO partitions)
        djray_rank00000.pt …                            per worker: data position + torch/numpy/python(/cuda) RNG
        djray_meta.json                                 step, total steps, world size, arch, last loss, config,
                                                        the data's decode.max_pixels (eval decodes with it)
        djray_model.pt                                  plain fp32 state dict (ZeRO 0–2), for `djray eval`
    output.path/metrics.jsonl, train_summary.json
"""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from djray.train.config import TrainConfig

CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
META = "djray_meta.json"
MODEL_FILE = "djray_model.pt"
SUMMARY = "train_summary.json"


def rng_state() -> dict[str, Any]:
    import torch

    np_state = np.random.get_state()
    st = {"torch": torch.get_rng_state(), "python": random.getstate(),
          "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:])}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    name, keys, *rest = st["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def latest_tag(ckdir: Path) -> str | None:
    f = ckdir / "latest"
    return f.read_text().strip() if f.exists() else None


def tag_name(step: int) -> str:
    return f"step_{step:08d}"


def rank_file(rank: int) -> str:
    return f"djray_rank{rank:05d}.pt"


class Metrics:
    """metrics.jsonl, written by rank 0; on resume the lines after the checkpoint's step are dropped."""

    def __init__(self, path: Path, enabled: bool, resume_step: int):
        self.path, self.enabled = path, enabled
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            keep = []
            if resume_step and path.exists():
                keep = [ln for ln in path.read_text().splitlines() if ln.strip()
                        and json.loads(ln).get("step", 0) <= resume_step]
            path.write_text("".join(ln + "\n" for ln in keep))

    def write(self, rec: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(rec, sort_keys=True) + "\n")


def save_checkpoint(engine, cfg: TrainConfig, ckdir: Path, step: int, total: int, world: int, rank: int,
                    data_state: dict, last_loss: float, max_pixels: int | None = None) -> None:
    """Per-worker state first, then DeepSpeed's (which writes `latest` last): `latest` never names a partial tag."""
    import torch
    import torch.distributed as dist

    tag = tag_name(step)
    tag_dir = ckdir / tag
    tag_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"data": data_state, "rng": rng_state()}, tag_dir / rank_file(rank))
    if rank == 0:
        meta = {"step": step, "total_steps": total, "world_size": world, "arch": cfg.model.resolved().as_dict(),
                "last_loss": last_loss if math.isfinite(last_loss) else None,
                "loss": cfg.loss, "zero_stage": cfg.deepspeed.zero_stage, "precision": cfg.train.precision,
                "config": cfg.model_dump(mode="json"), "max_pixels": max_pixels}
        (tag_dir / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if cfg.deepspeed.zero_stage < 3:
            state = {k: v.detach().float().cpu() if v.is_floating_point() else v.cpu()
                     for k, v in engine.module.state_dict().items()}
            torch.save(state, tag_dir / MODEL_FILE)
    engine.save_checkpoint(str(ckdir), tag=tag, client_state={"djray_step": step})
    dist.barrier()
    if rank == 0:
        tags = sorted(p.name for p in ckdir.glob("step_*") if p.is_dir())
        for old in tags[: max(0, len(tags) - cfg.train.keep_checkpoints)]:
            if old != tag:
                shutil.rmtree(ckdir / old, ignore_errors=True)
