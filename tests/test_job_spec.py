"""`djray/job_spec.py`: the job `djray submit` builds — resolved config in the working directory, entrypoints,
runtime environment merge, metadata — without contacting any cluster."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from djray.config import config_sha256, load_config
from djray.job_spec import CONFIG_NAME, build_job

REPO = Path(__file__).resolve().parents[1]
TINY_VISION = {"model": "test_vit", "weights": "random", "image_size": 160, "ratio": 0.3, "batch_size": 4,
               "precision": "fp32"}


def _job_config(where: Path, input_path: str, output_path: str, **sections) -> Path:
    """A govern config at `where`/job.yaml (the input need not exist: nothing is read when a job is built)."""
    raw = {"input": {"path": input_path, "format": "webdataset"}, "output": {"path": output_path}, **sections}
    path = where / "job.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_build_job_carries_the_resolved_config_and_the_entrypoints(tmp_path):
    cfg = _job_config(tmp_path, str(tmp_path / "corpus-not-here"), str(tmp_path / "out"), vision=dict(TINY_VISION),
                      ray={"address": "ray://elsewhere:10001"})
    job = build_job(str(cfg), ["vision.ratio=0.25", "decode.min_side=40"])
    try:
        wd = Path(job.runtime_env["working_dir"])
        assert wd == job.workdir and wd.is_dir()
        assert job.entrypoint == "python -m djray.jobs.govern djray-job.yaml"
        # the resolved config: overrides applied, ray.address cleared (the job attaches to the cluster it runs on)
        resolved = yaml.safe_load((wd / CONFIG_NAME).read_text())
        assert resolved["vision"]["ratio"] == 0.25 and resolved["decode"]["min_side"] == 40
        assert resolved["ray"]["address"] is None
        assert resolved["input"]["path"] == str(tmp_path / "corpus-not-here")  # not required to exist here
        expected = load_config(str(cfg), ["vision.ratio=0.25", "decode.min_side=40"])
        assert job.metadata["djray_config_sha256"] == config_sha256(expected)
        assert config_sha256(load_config(wd / CONFIG_NAME)) == config_sha256(expected)
        assert job.metadata["djray_job"] == "govern"
        assert job.metadata["djray_stages"] == ",".join(expected.stages()) and "vision" in expected.stages()
        assert all(isinstance(v, str) for v in job.metadata.values())
        # the entrypoint is a module of the shipped package: the working directory holds the config alone
        assert sorted(p.name for p in wd.iterdir()) == [CONFIG_NAME]
        # djray is installed editable from this checkout: the package itself is shipped
        assert job.runtime_env["py_modules"] == [str(REPO / "djray")]
        assert job.runtime_env["env_vars"] == {"PYTHONUNBUFFERED": "1"}
        assert any("ray.address" in n for n in job.notes)
        assert any("input.path" in n and "not on S3" in n for n in job.notes)
    finally:
        job.cleanup()
    assert not job.workdir.exists()


def test_build_job_train_entrypoint(tmp_path):
    cfg = tmp_path / "train.yaml"
    cfg.write_text("data: s3://bucket/governed/\nepochs: 1\n")
    job = build_job(str(cfg), ["epochs=2"], train=True)
    try:
        assert job.entrypoint == "python -m djray.jobs.train djray-job.yaml"
        assert yaml.safe_load((job.workdir / CONFIG_NAME).read_text()) == {"data": "s3://bucket/governed/",
                                                                              "epochs": 2}
        assert job.metadata["djray_job"] == "train"
    finally:
        job.cleanup()


def test_runtime_env_merge(tmp_path, monkeypatch):
    cfg = _job_config(tmp_path, "s3://b/in/", "s3://b/out/")
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "labels.txt").write_text("cat\ndog\n")
    (extra / "__pycache__").mkdir()
    (extra / "__pycache__" / "x.pyc").write_bytes(b"")
    mylib = tmp_path / "mylib"
    mylib.mkdir()
    (mylib / "__init__.py").write_text("")
    env_file = tmp_path / "env.yaml"
    env_file.write_text(yaml.safe_dump({
        "pip": ["requests"], "py_modules": [str(mylib)], "working_dir": str(extra), "excludes": ["*.log"],
        "env_vars": {"AWS_REGION": None, "AWS_ENDPOINT_URL": None, "HF_HUB_OFFLINE": 1, "PYTHONUNBUFFERED": "0",
                     "MY_API_KEY": "k"}}))
    environ = {"AWS_REGION": "eu-west-1", "AWS_SECRET_ACCESS_KEY": "never-sent", "AWS_ACCESS_KEY_ID": "never-sent"}
    job = build_job(str(cfg), [], runtime_env_file=str(env_file), environ=environ)
    try:
        env = job.runtime_env
        assert env["pip"] == ["requests"] and env["excludes"] == ["*.log"]
        assert env["py_modules"] == [str(mylib), str(REPO / "djray")]
        # null forwards the local value, unset locally → dropped; the user's own values win; nothing else leaks
        assert env["env_vars"] == {"AWS_REGION": "eu-west-1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "0",
                                   "MY_API_KEY": "k"}
        assert "never-sent" not in json.dumps(env)
        wd = Path(env["working_dir"])
        assert (wd / "labels.txt").read_text() == "cat\ndog\n" and not (wd / "__pycache__").exists()
        assert (wd / CONFIG_NAME).is_file()
        # S3 paths, no ray.address: the only note is the secret-looking variable
        assert len(job.notes) == 1 and "env_vars.MY_API_KEY looks like a secret" in job.notes[0]
    finally:
        job.cleanup()
    assert (extra / "labels.txt").exists()  # the user's directory is copied, never changed
