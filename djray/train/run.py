"""Entry points: `djray train`, `djray eval`, `python -m djray.train`, and the `deepspeed` launcher.

    djray train CONFIG [--set k=v ...]                       # in process (ray.num_workers: 0) or N Ray Train workers
    djray eval CONFIG --checkpoint PATH [--set k=v ...]      # zero-shot + retrieval on full images → eval.json
    deepspeed --num_gpus 8 --module djray.train CONFIG       # the plain DeepSpeed launcher (ray.num_workers: 0)

Exit codes as `djray run`: 0 done, 2 configuration or data problem found before training, 1 training failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from djray.config import ConfigError

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def _launched_by_deepspeed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in os.environ


def preflight(cfg, world: int):
    """Every check that needs no model: arch/grid, the data contract, batch split, the resume point. → DataPlan."""
    from djray.train.data import inspect_data
    from djray.train.checkpoint import CHECKPOINTS, META, latest_tag
    from djray.train.loop import deepspeed_config

    arch = cfg.model.resolved()
    if cfg.train.precision != "fp32":
        if cfg.ray.num_workers and not _launched_by_deepspeed():
            if not cfg.ray.use_gpu:
                raise ConfigError(f"train.precision: {cfg.train.precision} needs GPU workers (ray.use_gpu: true); "
                                  "use fp32 on CPU")
        else:
            import torch

            if not torch.cuda.is_available():
                raise ConfigError(f"train.precision: {cfg.train.precision} needs a GPU; use fp32 on CPU")
    plan = inspect_data(cfg, arch)
    micro = cfg.micro_batch(world)
    total = cfg.total_steps(plan.check_workers(world, micro))
    deepspeed_config(cfg, world)
    ckdir = Path(cfg.output.path) / CHECKPOINTS
    tag = latest_tag(ckdir) if cfg.train.resume else None
    if tag is not None:
        meta_path = ckdir / tag / META
        if not meta_path.exists():
            raise ConfigError(f"output.path: {ckdir}/latest names {tag}, which has no {META}")
        meta = json.loads(meta_path.read_text())
        if (meta["world_size"], meta["arch"], meta["total_steps"]) != (world, arch.as_dict(), total):
            raise ConfigError(
                f"output.path: checkpoint {tag} was made with {meta['world_size']} worker(s), arch "
                f"{meta['arch']['name']}, {meta['total_steps']} total steps; this run has {world}, {arch.name}, "
                f"{total}: resume with the same settings, or set train.resume: false / another output.path")
    return plan


def contrastive_batch_warning(cfg, world: int) -> str | None:
    """The start-up warning when gradient accumulation shrinks the contrastive batch (allowed by the config)."""
    gas = cfg.grad_accum()
    if gas <= 1:
        return None
    micro = cfg.micro_batch(world)
    return (f"djray train: WARNING gradient_accumulation_steps {gas}: the {cfg.loss} loss sees {micro * world} "
            f"negatives per step (micro batch {micro} × {world} workers), not train.batch_size "
            f"{cfg.train.batch_size} (train.allow_small_contrastive_batch: true)")


def run_train(cfg, log=print, on_step=None) -> dict[str, Any]:
    """Preflight, then train in this process, in Ray Train workers, or as one rank of a `deepspeed` launch."""
    if _launched_by_deepspeed():
        if cfg.ray.num_workers:
            raise ConfigError("ray.num_workers: must be 0 under the deepspeed launcher (it starts the workers)")
        world = int(os.environ["WORLD_SIZE"])
    else:
        world = max(1, cfg.ray.num_workers)
    plan = preflight(cfg, world)
    warning = contrastive_batch_warning(cfg, world)
    if warning and int(os.environ.get("RANK", "0")) == 0:
        log(warning)
    if cfg.ray.num_workers and not _launched_by_deepspeed():
        from djray.train.ray_train import fit

        return fit(cfg, plan, log=log)
    from djray.train.loop import train

    return train(cfg, plan, log=log, on_step=on_step)


def train_command(config: str, overrides: list[str]) -> int:
    from djray.train.config import load_train_config
    from djray.train.loop import TrainError

    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    try:
        cfg = load_train_config(config, overrides)
        summary = run_train(cfg, log=log)
    except ConfigError as e:
        print(f"djray: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except TrainError as e:
        print(f"djray: training failed: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("djray: interrupted (re-run the same command to resume from the last checkpoint)", file=sys.stderr)
        return 130
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, sort_keys=True))
    return EXIT_OK


def eval_command(config: str, checkpoint: str, overrides: list[str]) -> int:
    from djray.train.config import load_train_config
    from djray.train.eval import evaluate

    try:
        cfg = load_train_config(config, overrides)
        result = evaluate(cfg, checkpoint, log=lambda m: print(m, file=sys.stderr, flush=True))
    except ConfigError as e:
        print(f"djray: {e}", file=sys.stderr)
        return EXIT_CONFIG
    print(json.dumps(result, sort_keys=True))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m djray.train CONFIG [--set k=v ...]` (also what djray.jobs.train and the deepspeed launcher call).
    `python -m djray.train eval CONFIG --checkpoint PATH` evaluates."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "eval":
        p = argparse.ArgumentParser(prog="djray.train eval")
        p.add_argument("config")
        p.add_argument("--checkpoint", required=True)
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="dotted.key=value")
        a = p.parse_args(argv[1:])
        return eval_command(a.config, a.checkpoint, a.overrides)
    if argv and argv[0] == "train":
        argv = argv[1:]
    p = argparse.ArgumentParser(prog="djray.train", description="Train CLIP on governed data (DeepSpeed).")
    p.add_argument("config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="dotted.key=value")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
    a = p.parse_args(argv)
    if a.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(a.local_rank))
    return train_command(a.config, a.overrides)
