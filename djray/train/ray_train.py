"""`ray.num_workers > 0`: the same loop in Ray Train workers (`TorchTrainer`).

Ray Train starts N workers, sets up the torch process group (gloo on CPU, nccl on GPU) and the usual environment
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT); inside, `deepspeed.init_distributed` adopts that group and each
worker reads its own share of the shards (`files[rank::world]`). Preflight ran on the driver already.

Checkpoints go to `output.path/checkpoints/` from every worker: on more than one node that path must be a shared
filesystem (NFS, FSx, a mounted bucket). Ray Train's own run state goes to `output.path/_ray_train/`.
"""

from __future__ import annotations

import json
import os
from typing import Any

from djray.train.config import TrainConfig
from djray.train.data import DataPlan
from djray.train.checkpoint import SUMMARY
from djray.train.loop import TrainError, default_extensions_dir


def _worker(config: dict[str, Any]) -> None:
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", config["torch_extensions_dir"])
    import ray.train

    from djray.train.config import parse_train_config
    from djray.train.loop import train

    ctx = ray.train.get_context()
    os.environ.setdefault("LOCAL_RANK", str(ctx.get_local_rank()))
    cfg = parse_train_config(config["cfg"])
    train(cfg, config["plan"], log=lambda m: print(m, flush=True))  # rank 0 writes train_summary.json


def fit(cfg: TrainConfig, plan: DataPlan, log=print) -> dict[str, Any]:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if not ray.is_initialized():
        address = cfg.ray.address or os.environ.get("RAY_ADDRESS") or None
        ray.init(address=address, logging_level="WARNING", include_dashboard=False)
    n, gpu = cfg.ray.num_workers, cfg.ray.use_gpu
    resources = {"CPU": cfg.ray.cpus_per_worker, **({"GPU": 1} if gpu else {})}
    # the keys as the user set them: a worker re-validates them (a full dump would "set" rescore-only patch keys)
    config = {"cfg": cfg.model_dump(mode="json", exclude_unset=True), "plan": plan,
              "torch_extensions_dir": os.environ.get("TORCH_EXTENSIONS_DIR") or default_extensions_dir()}
    trainer = TorchTrainer(
        _worker,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=n, use_gpu=gpu, resources_per_worker=resources),
        run_config=RunConfig(name="djray-train", storage_path=os.path.abspath(os.path.join(cfg.output.path,
                                                                                          "_ray_train"))),
    )
    summary = os.path.join(cfg.output.path, SUMMARY)
    if os.path.exists(summary):
        os.remove(summary)  # a stale one from an earlier run must not pass for this run's
    log(f"djray train: starting {n} Ray Train worker(s) ({resources})")
    try:
        result = trainer.fit()
    except Exception as e:  # noqa: BLE001 - TrainingFailedError and friends: one message, exit 1
        raise TrainError(f"Ray Train run failed: {e}") from e
    if result.error is not None:
        raise TrainError(f"Ray Train run failed: {result.error}")
    if not os.path.exists(summary):
        raise TrainError(f"Ray Train run ended without {summary}")
    with open(summary) as f:
        return json.load(f)
