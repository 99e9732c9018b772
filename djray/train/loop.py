"""The training loop: one DeepSpeed engine per worker, the same code in-process, in Ray Train workers and under the
`deepspeed` launcher.

* Optimiser: torch AdamW, its fused kernel where torch has one (passed to `deepspeed.initialize`; DeepSpeed's
  FusedAdam would JIT-compile for a minute), no weight decay on gains/biases/temperature; linear warmup then cosine
  decay to `train.min_lr` (LambdaLR, stepped by the engine). ZeRO stage from `deepspeed.zero_stage`; `deepspeed.config` is merged into the DeepSpeed config.
* Precision: fp32 on CPU (gloo); bf16 / fp16 through DeepSpeed's mixed precision on GPU (nccl).
* Checkpoints (`djray.train.checkpoint`): DeepSpeed's model/optimizer/scheduler + per worker the data position and
  RNG states. Resuming restores all of it: the next step's loss equals an uninterrupted run's.
* `output.path/metrics.jsonl`: one JSON line per logged step (step, loss, lr, samples_per_s, image_tokens_per_s, …);
  `output.path/train_summary.json` when the run ends.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from djray.config import ConfigError
from djray.train.batches import BatchBuilder, BatchLoader
from djray.train.checkpoint import (CHECKPOINTS, META, METRICS, SUMMARY, Metrics, latest_tag, rank_file,
                                    save_checkpoint, set_rng_state, tag_name)
from djray.train.config import TrainConfig
from djray.train.data import DataPlan, open_stream


class TrainError(Exception):
    """Training could not complete (exit 1)."""


# ---- environment -----------------------------------------------------------------------------------------------------
def default_extensions_dir() -> str:
    return str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "djray" / "torch_extensions")


def prepare_environment() -> None:
    """Set before DeepSpeed is imported: a persistent JIT-extension cache, and no shm comm-op build on CPU.

    DeepSpeed's CPU accelerator JIT-compiles a shared-memory all-reduce op (~35–65 s) on its first init_distributed.
    That op only serves `inference_all_reduce` (DeepSpeed inference with AutoTP), never training, so on CPU djray marks
    it unavailable (set DJRAY_DS_SHM_COMM=1 to keep DeepSpeed's default). Anything DeepSpeed still compiles lands in
    TORCH_EXTENSIONS_DIR (default ~/.cache/djray/torch_extensions) and is reused by later runs.
    """
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", default_extensions_dir())


def _import_deepspeed():
    try:
        import deepspeed
    except ImportError as e:
        raise ConfigError(f"DeepSpeed is not installed ({e}): pip install 'djray[train]' "
                          "(DS_BUILD_OPS=0 builds no ops ahead of time)") from None
    return deepspeed


def _skip_shm_comm_op(deepspeed) -> None:
    if os.environ.get("DJRAY_DS_SHM_COMM") == "1":
        return
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() != "cpu":
        return
    try:
        from deepspeed.ops.op_builder.cpu.comm import ShareMemCommBuilder

        compatible = deepspeed.ops.__compatible_ops__
        if isinstance(compatible, dict):
            compatible[ShareMemCommBuilder.NAME] = False
    except Exception:  # noqa: BLE001 - another DeepSpeed layout: it builds the op as usual
        pass


def init_distributed(deepspeed, device: str) -> tuple[int, int, int]:
    """Join the process group the launcher (deepspeed, Ray Train) set up, or make a one-process group.

    The one-process group lives on an in-process store (no port, no RANK/MASTER_* variables left in this process's
    environment for child processes to trip over)."""
    import torch.distributed as dist

    backend = "nccl" if device == "cuda" else "gloo"
    if not dist.is_initialized() and "RANK" not in os.environ:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    deepspeed.init_distributed(dist_backend=backend)
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


@contextlib.contextmanager
def _local_rank_env(local_rank: int):
    """DeepSpeed's engine reads LOCAL_RANK from the environment; set it only while the engine is built."""
    if "LOCAL_RANK" in os.environ:
        yield
        return
    os.environ["LOCAL_RANK"] = str(local_rank)
    try:
        yield
    finally:
        os.environ.pop("LOCAL_RANK", None)


# ---- configuration pieces ---------------------------------------------------------------------------------------------
def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def deepspeed_config(cfg: TrainConfig, world: int) -> dict[str, Any]:
    prec = cfg.train.precision
    ds: dict[str, Any] = {
        "train_batch_size": cfg.train.batch_size,
        "train_micro_batch_size_per_gpu": cfg.micro_batch(world),
        "gradient_accumulation_steps": cfg.grad_accum(),
        "zero_optimization": {"stage": cfg.deepspeed.zero_stage},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
        "bf16": {"enabled": prec == "bf16"},
        "fp16": {"enabled": prec == "fp16", "initial_scale_power": 16},
    }
    if cfg.train.grad_clip:
        ds["gradient_clipping"] = cfg.train.grad_clip
    ds = _merge(ds, cfg.deepspeed.config)
    stage = ds.get("zero_optimization", {}).get("stage", cfg.deepspeed.zero_stage)
    if stage != cfg.deepspeed.zero_stage:
        raise ConfigError(f"deepspeed.config.zero_optimization.stage: {stage} disagrees with deepspeed.zero_stage "
                          f"{cfg.deepspeed.zero_stage}; set deepspeed.zero_stage only")
    return ds


class WarmupCosine:
    """lr factor: linear warmup over `warmup` steps, then cosine from 1 to min_ratio at `total` steps."""

    def __init__(self, warmup: int, total: int, min_ratio: float):
        self.warmup, self.total, self.min_ratio = warmup, total, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        span = max(1, self.total - self.warmup)
        t = min(1.0, (step - self.warmup) / span)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def adamw(model, cfg: TrainConfig):
    """torch AdamW, fused kernel where torch has one for the device (CPU too since torch 2.4: ~4× faster steps)."""
    import torch

    from djray.train.model import param_groups

    kwargs = dict(lr=cfg.train.lr, betas=cfg.train.betas, eps=cfg.train.eps)
    try:
        return torch.optim.AdamW(param_groups(model, cfg.train.weight_decay), fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(param_groups(model, cfg.train.weight_decay), **kwargs)


def build_engine(deepspeed, cfg: TrainConfig, total: int, world: int, local_rank: int):
    """Model + AdamW + warmup/cosine LambdaLR → `deepspeed.initialize`. Returns (engine, scheduler)."""
    import torch

    from djray.train.model import build_model

    model = build_model(cfg.model.resolved(), cfg.loss, seed=cfg.train.seed)
    opt = adamw(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, WarmupCosine(cfg.train.warmup, total, cfg.train.min_lr / cfg.train.lr))
    with _local_rank_env(local_rank):
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched,
                                               config=deepspeed_config(cfg, world))
    return engine, sched


def setup_deepspeed(device: str):
    """Environment, DeepSpeed import, quiet logs, process group. Returns (deepspeed, rank, world, local_rank)."""
    prepare_environment()
    deepspeed = _import_deepspeed()
    _skip_shm_comm_op(deepspeed)
    if not os.environ.get("DJRAY_DS_VERBOSE"):
        from deepspeed.utils import logger as ds_logger

        ds_logger.setLevel(logging.WARNING)
    return (deepspeed, *init_distributed(deepspeed, device))


def full_patch_start(cfg: TrainConfig, total: int) -> int:
    """First step (0-based) that runs on all patches."""
    if cfg.patches.mode == "full":
        return 0
    return total - int(math.floor(cfg.train.full_patch_tuning * total + 0.5))


def _tokenizer(context_length: int):
    from djray._compat import patch_torchvision

    patch_torchvision()
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer(context_length=context_length)
    return lambda texts: tok(texts).numpy()


# ---- the loop --------------------------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, plan: DataPlan, *, on_step: Callable[[int, float], None] | None = None,
          log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train on this process's share. Call once per worker; the process group comes from the launcher (or is made
    for one process). Returns a summary (same on every rank)."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    device = "cuda" if torch.cuda.is_available() and (cfg.ray.use_gpu or cfg.ray.num_workers == 0) else "cpu"
    if cfg.train.precision != "fp32" and device != "cuda":
        raise ConfigError(f"train.precision: {cfg.train.precision} needs a GPU; use fp32 on CPU")  # preflight too
    deepspeed, rank, world, local_rank = setup_deepspeed(device)
    arch = cfg.model.resolved()
    micro = cfg.micro_batch(world)
    spe = plan.check_workers(world, micro)
    total = cfg.total_steps(spe)
    full_from = full_patch_start(cfg, total)
    out = Path(cfg.output.path)
    ckdir = out / CHECKPOINTS
    gas = cfg.grad_accum()

    engine, sched = build_engine(deepspeed, cfg, total, world, local_rank)

    step, data_state, last_loss = 0, None, float("nan")
    tag = latest_tag(ckdir) if cfg.train.resume else None
    if tag is not None:
        meta = json.loads((ckdir / tag / META).read_text())
        if meta["world_size"] != world or meta["arch"] != arch.as_dict() or meta["total_steps"] != total:
            raise ConfigError(
                f"output.path: checkpoint {tag} was made with {meta['world_size']} worker(s), arch "
                f"{meta['arch']['name']}, {meta['total_steps']} total steps; this run has {world}, {arch.name}, "
                f"{total}: resume with the same settings, or set train.resume: false / another output.path")
        path, _ = engine.load_checkpoint(str(ckdir), tag=tag)
        if path is None:
            raise TrainError(f"could not load checkpoint {ckdir / tag}")
        st = torch.load(ckdir / tag / rank_file(rank), weights_only=True)
        step, data_state = meta["step"], st["data"]
        last_loss = float("nan") if meta.get("last_loss") is None else float(meta["last_loss"])
        if step >= total:
            log(f"djray train: {ckdir / tag} is the last step ({total}): nothing left to train")
        set_rng_state(st["rng"])
        log(f"djray train: resumed from {ckdir / tag} at step {step}/{total}")

    metrics = Metrics(out / METRICS, rank == 0, step)
    stream = open_stream(cfg, plan, rank, world, data_state)
    pool = ThreadPoolExecutor(cfg.data.num_workers) if cfg.data.num_workers > 0 else None
    builder = BatchBuilder(cfg, plan, _tokenizer(arch.context_length), pool)
    loader = BatchLoader(stream, builder, micro, cfg.data.prefetch)
    if rank == 0 and step == 0:
        log(f"djray train: {arch.name} on {plan.num_rows} rows ({len(plan.shards)} shards), {world} worker(s) × "
            f"micro batch {micro} × {gas} = batch {cfg.train.batch_size}, {total} steps ({spe} per epoch), "
            f"patches {cfg.patches.mode}, ZeRO {cfg.deepspeed.zero_stage}, {cfg.train.precision} on {device}")
    window_t, window_samples, window_tokens = time.perf_counter(), 0, 0
    samples_per_step = micro * gas * world
    total_time, total_samples = 0.0, 0
    try:
        while step < total:
            lr = sched.get_last_lr()[0]
            full = step >= full_from
            loss_sum, tokens_per_image, state = 0.0, arch.num_patches + 1, data_state
            for _ in range(gas):
                batch, state = loader.next()
                pixels = torch.from_numpy(batch.pixels).to(engine.device, non_blocking=True)
                tokens = torch.from_numpy(batch.tokens).to(engine.device, non_blocking=True)
                keep = None
                if not full and batch.keep_idx is not None:
                    keep = torch.from_numpy(batch.keep_idx).to(engine.device, non_blocking=True)
                    tokens_per_image = keep.shape[1] + 1
                loss = engine(pixels, tokens, keep, loss=cfg.loss)
                engine.backward(loss)
                engine.step()
                loss_sum += float(loss.detach())
            step += 1
            data_state = state
            window_samples += samples_per_step
            window_tokens += samples_per_step * tokens_per_image
            if step % cfg.train.log_every == 0 or step == total:
                last_loss = _mean_over_workers(loss_sum / gas, world, engine.device)
                if not math.isfinite(last_loss):
                    raise TrainError(f"loss is {last_loss} at step {step}")
                dt = time.perf_counter() - window_t
                total_time += dt
                total_samples += window_samples
                metrics.write({"step": step, "loss": last_loss, "lr": lr, "samples_per_s": window_samples / dt,
                               "image_tokens_per_s": window_tokens / dt, "tokens_per_image": tokens_per_image,
                               "full_patches": full, "logit_scale": float(engine.module.scale().detach())
                               if cfg.deepspeed.zero_stage < 3 else None, "epoch": _epoch(data_state),
                               "time": time.time()})
                window_t, window_samples, window_tokens = time.perf_counter(), 0, 0
            if step == total or (cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0):
                save_checkpoint(engine, cfg, ckdir, step, total, world, rank, data_state, last_loss,
                                plan.max_pixels)
            if on_step is not None:
                on_step(step, last_loss)
    finally:
        loader.close()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
    summary = {"steps": step, "total_steps": total, "loss": last_loss if math.isfinite(last_loss) else None,
               "world_size": world,
               "samples_per_s": total_samples / total_time if total_time else None,
               "checkpoint": str(ckdir / tag_name(step)), "metrics": str(out / METRICS)}
    if rank == 0:
        (out / SUMMARY).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def _epoch(state: dict | None) -> int:
    return int(state["epoch"]) if state else 0


def _mean_over_workers(value: float, world: int, device) -> float:
    if world == 1:
        return value
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / world
