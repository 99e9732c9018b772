"""Two Ray Train workers (TorchTrainer, gloo) on the shared 2-CPU Ray instance, each reading its own shards."""

from __future__ import annotations

import json
import math

import pytest

from djray.train.config import parse_train_config
from djray.train.run import run_train


@pytest.mark.slow
def test_two_ray_train_workers(ray_cluster, train_config, tmp_path):
    out = tmp_path / "ray2"
    raw = train_config(out, ray={"num_workers": 2, "cpus_per_worker": 1}, deepspeed={"zero_stage": 2},
                       train={"batch_size": 8, "steps": 3, "checkpoint_every": 0}, data={"num_workers": 1})
    summary = run_train(parse_train_config(raw), log=lambda m: None)
    assert summary["world_size"] == 2 and summary["steps"] == 3 and math.isfinite(summary["loss"])
    m = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in m] == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in m)
    tag = out / "checkpoints" / "step_00000003"
    names = {p.name for p in tag.iterdir()}
    # one data/RNG state per worker, ZeRO-2 optimizer partitions per worker
    assert {"djray_rank00000.pt", "djray_rank00001.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
            "zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= names
    meta = json.loads((tag / "djray_meta.json").read_text())
    assert meta["world_size"] == 2
    # each worker read its own share (shards[rank::2]): its saved position is where a stream over exactly that share
    # stands after 3 micro batches of 4 rows
    import torch

    from djray.train.data import inspect_data, open_stream

    cfg = parse_train_config(raw)
    plan = inspect_data(cfg, cfg.model.resolved())
    for rank in (0, 1):
        saved = torch.load(tag / f"djray_rank{rank:05d}.pt", weights_only=True)["data"]
        _, expected = open_stream(cfg, plan, rank, 2).take(3 * 4)
        assert saved == expected, rank
    assert {s.rel for s in plan.share(0, 2)}.isdisjoint(s.rel for s in plan.share(1, 2))
