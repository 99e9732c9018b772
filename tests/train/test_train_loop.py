"""The real training loop (DeepSpeed on gloo, CPU) on governed output: loss goes down on a fixed batch, a resumed
run continues exactly like an uninterrupted one, metrics/checkpoints/eval files, and the command line."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from djray.train.config import parse_train_config
from djray.train.run import run_train

METRIC_KEYS = {"step", "loss", "lr", "samples_per_s", "image_tokens_per_s"}


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_loss_decreases_on_a_fixed_batch(governed_rows, train_config, tmp_path):
    """batch = the whole (small) dataset, so every step sees the same rows: the ITC loss must go down."""
    out = tmp_path / "fixed"
    raw = train_config(out, train={"batch_size": governed_rows, "steps": 6, "lr": 2e-3, "warmup": 0},
                       deepspeed={"zero_stage": 2})
    summary = run_train(parse_train_config(raw), log=lambda m: None)
    m = _metrics(out)
    assert [r["step"] for r in m] == list(range(1, 7)) and summary["steps"] == 6
    losses = [r["loss"] for r in m]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.1 and min(losses[3:]) < min(losses[:3]), losses
    assert METRIC_KEYS <= set(m[0]) and m[0]["tokens_per_image"] == 1 + 8 and m[0]["samples_per_s"] > 0
    assert m[0]["image_tokens_per_s"] == pytest.approx(9 * m[0]["samples_per_s"])
    tag = out / "checkpoints" / "step_00000006"
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000006"
    assert {"djray_meta.json", "djray_model.pt", "djray_rank00000.pt"} <= {p.name for p in tag.iterdir()}


def test_resume_gives_the_same_next_losses_as_an_uninterrupted_run(train_config, tmp_path):
    """Checkpoint at step 2, crash after step 3, re-run: steps 3-5 reproduce the uninterrupted run exactly
    (model, AdamW moments, LR schedule, data position incl. shuffle/flip, RNG)."""
    common = dict(train={"steps": 5, "warmup": 2, "checkpoint_every": 2}, data={"hflip": 0.5})
    straight = tmp_path / "straight"
    run_train(parse_train_config(train_config(straight, **common)), log=lambda m: None)

    crashed = tmp_path / "crashed"
    cfg = parse_train_config(train_config(crashed, **common))

    class Crash(Exception):
        pass

    def crash_after_3(step, loss):
        if step == 3:
            raise Crash

    with pytest.raises(Crash):
        run_train(cfg, log=lambda m: None, on_step=crash_after_3)
    assert (crashed / "checkpoints" / "latest").read_text().strip() == "step_00000002"
    assert [r["step"] for r in _metrics(crashed)] == [1, 2, 3]
    logs = []
    run_train(cfg, log=logs.append)
    assert any("resumed from" in line and "at step 2/5" in line for line in logs)
    a, b = _metrics(straight), _metrics(crashed)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5]  # the lost step 3 line was replaced, not duplicated
    for ra, rb in zip(a, b):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-6, abs=1e-7), (ra["step"], ra["loss"], rb["loss"])
        assert rb["lr"] == pytest.approx(ra["lr"], rel=1e-12)
    # a finished run re-run: nothing to train, same summary
    logs.clear()
    summary = run_train(cfg, log=logs.append)
    assert summary["steps"] == 5 and summary["loss"] == pytest.approx(b[-1]["loss"])
    assert any("nothing left to train" in line for line in logs) and len(_metrics(crashed)) == 5


def test_full_patch_tuning_and_rescore_and_siglip(train_config, tmp_path):
    out = tmp_path / "fpt"
    raw = train_config(out, patches={"mode": "rescore", "ratio": 0.25, "strategy": "stratified"}, loss="siglip",
                       train={"steps": 4, "full_patch_tuning": 0.5}, deepspeed={"zero_stage": 0})
    run_train(parse_train_config(raw), log=lambda m: None)
    m = _metrics(out)
    assert [r["tokens_per_image"] for r in m] == [5, 5, 17, 17]  # 4 of 16 patches, then all 16 (+ [CLS])
    assert [r["full_patches"] for r in m] == [False, False, True, True]
    assert all(math.isfinite(r["loss"]) for r in m)


def _eval_sets(tmp_path: Path) -> tuple[Path, Path]:
    from djray.sample_data import make_sample

    rows = [make_sample(500 + i, seed=9) for i in range(12)]
    cls, ret = tmp_path / "cls.parquet", tmp_path / "ret"
    pq.write_table(pa.table({"image": [r["image"] for r in rows],
                             "label": [r["scene"]["objects"][0]["shape"] for r in rows]}), cls)
    ret.mkdir()
    pq.write_table(pa.table({"image": [r["image"] for r in rows], "caption": [r["caption"] for r in rows]}),
                   ret / "part-0.parquet")
    return cls, ret


def _djray(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "djray", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TORCH_EXTENSIONS_DIR": os.environ["TORCH_EXTENSIONS_DIR"]})


def test_cli_train_then_eval_on_full_images(train_config, tmp_path):
    cls, ret = _eval_sets(tmp_path)
    out = tmp_path / "cli"
    raw = train_config(out, train={"steps": 2},
                       eval={"classification": {"path": str(cls), "templates": ["a photo of a {}.", "a {}."]},
                             "retrieval": {"path": str(ret)}, "batch_size": 5})
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(raw))
    r = _djray("train", str(config), "--set", "train.steps=3")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["steps"] == 3
    assert json.loads((out / "train_summary.json").read_text())["steps"] == 3

    r = _djray("eval", str(config), "--checkpoint", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((out / "eval.json").read_text())
    assert result["step"] == 3 and result["patches"] == "full"
    c = result["classification"]
    assert c["num_images"] == 12 and 2 <= c["num_classes"] <= 6 and 0 <= c["top1"] <= c["top5"] <= 1
    for direction in ("image_to_text", "text_to_image"):
        rec = result["retrieval"][direction]
        assert 0 <= rec["R@1"] <= rec["R@5"] <= rec["R@10"] <= 1
    assert "zero-shot: top1" in r.stderr and "retrieval image_to_text: R@1" in r.stderr

    # configuration and data problems: exit 2, one message, no traceback, nothing trained
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**raw, "output": {"path": str(tmp_path / "bad")}, "patches": {"mdoe": "kept"}}))
    r = _djray("train", str(bad))
    assert r.returncode == 2 and "patches.mdoe: unknown key" in r.stderr and "Traceback" not in r.stderr
    r = _djray("train", str(config), "--set", "model.image_size=96", "--set", f"output.path={tmp_path / 'bad'}")
    assert r.returncode == 2 and "grid mismatch" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "bad").exists()
    r = _djray("eval", str(config), "--checkpoint", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "is not a djray checkpoint" in r.stderr
