"""The job `djray submit` sends: the config resolved and validated here, the runtime environment, the metadata.

- **The resolved config travels in the job's working directory.** `djray submit` writes the config with every `--set`
  applied to `djray-job.yaml` in a fresh temporary directory and submits that directory as the runtime environment's
  `working_dir` (Ray uploads it once, at submission). The entrypoint is `python -m djray.jobs.govern djray-job.yaml`
  (or `djray.jobs.train` with `--train`): the same code as `djray run` (see `djray/jobs/`). Relative paths in the
  config resolve against that working directory on the cluster, so configs for clusters should use `s3://` URIs (or
  absolute paths on a filesystem every node mounts).
- **`ray.address` is cleared** in the submitted config: a submitted job attaches to the cluster it runs on.
- **`--runtime-env FILE`** (YAML or JSON) is merged in: `pip`, `py_modules`, `env_vars`, `excludes`, a local
  `working_dir` (its files are copied under the job's working directory; a remote one is refused, since the config has
  to be added to it), and anything else Ray accepts. An `env_vars` entry whose value is `null` forwards this machine's
  value (for example `AWS_REGION: null`); it is dropped when unset here.
- **The djray package**: when djray is installed editable from a source checkout (`pip install -e .`), its package
  directory is shipped with `py_modules`, so the cluster runs the code you have. Otherwise the cluster's image is
  expected to have djray installed (`docker/Dockerfile.gpu`, `docker/Dockerfile.cpu`).
- **Credentials never travel.** Nothing is taken from the local environment unless the runtime-env file asks for it,
  and AWS credential variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`) are refused: the
  runtime environment is stored and shown by the cluster's dashboard. Nodes get S3 access from their instance profile
  (or IRSA / pod identity on Kubernetes).

Nothing here contacts a cluster (that is `djray/submit.py`); `build_job` writes only a temporary directory.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONFIG_NAME = "djray-job.yaml"
ENTRYPOINT_MODULES = {"govern": "djray.jobs.govern", "train": "djray.jobs.train"}
# Never sent in a runtime environment (it is stored by the cluster and shown in its dashboard).
CREDENTIAL_VARS = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"})


class SubmitError(Exception):
    """A problem found before anything is sent to the cluster (exit 2)."""


@dataclass
class JobSpec:
    """Everything `submit_job` gets, plus the temporary working directory to delete after the upload."""

    kind: str  # govern | train
    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str]
    workdir: Path
    notes: list[str] = field(default_factory=list)

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def package_dir() -> Path:
    import djray

    return Path(djray.__file__).resolve().parent


def source_checkout() -> Path | None:
    """The source tree djray is installed editable from, or None (a regular install: the cluster image has djray).

    Editable means pip's `direct_url.json` says so, or the package does not live in a site-packages directory.
    """
    pkg = package_dir()
    root = pkg.parent
    if not (root / "pyproject.toml").is_file():
        return None
    editable = False
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        try:
            info = json.loads(distribution("djray").read_text("direct_url.json") or "{}")
            editable = bool(info.get("dir_info", {}).get("editable"))
        except PackageNotFoundError:
            editable = False
    except Exception:  # a broken metadata file must not stop a submission
        editable = False
    if not editable:
        editable = not any(part in ("site-packages", "dist-packages") for part in pkg.parts)
    return root if editable else None


def _resolve_config(config: str, overrides: list[str], kind: str) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """Parse + validate the config here (no input/output access); return (raw dict to submit, metadata, notes)."""
    from djray.config import ConfigError, apply_overrides, config_sha256, load_config

    notes: list[str] = []
    try:
        raw = yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise ConfigError(f"cannot read config {config}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config {config} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {config}: the top level must be a mapping")
    raw = apply_overrides(raw, list(overrides))
    metadata = {"djray_job": kind, "djray_config": Path(config).name}
    if kind == "govern":
        cfg = load_config(config, list(overrides))  # the model's own checks; input/output are not touched here
        metadata["djray_config_sha256"] = config_sha256(cfg)
        metadata["djray_stages"] = ",".join(cfg.stages())
        ray_section = raw.get("ray")
        if isinstance(ray_section, dict) and ray_section.get("address"):
            notes.append(f"ray.address ({ray_section['address']}) is not used on the cluster: a submitted job attaches "
                         "to the cluster it runs on")
            ray_section["address"] = None
        text = getattr(cfg, "text", None)
        key_env = getattr(text, "api_key_env", None)
        if text is not None and getattr(text, "engine", None) == "openai" and key_env:
            notes.append(f"text.api_key_env: the job reads {key_env} from the environment of the cluster's nodes "
                         "(a secret the nodes get from their own environment, not from this submission)")
        for key, uri in (("input.path", cfg.input.path), ("output.path", cfg.output.path)):
            if not uri.startswith("s3://"):
                where = "the job's working directory" if not os.path.isabs(uri) else "each node's filesystem"
                notes.append(f"{key} {uri!r} is not on S3: it resolves against {where} on the cluster, so every node "
                             "must see it (shared filesystem) or the job will not find it")
    return raw, metadata, notes


def load_runtime_env(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise SubmitError(f"--runtime-env {path}: cannot read: {e.strerror or e}") from None
    try:
        env = yaml.safe_load(text)  # JSON is YAML
    except yaml.YAMLError as e:
        raise SubmitError(f"--runtime-env {path}: not valid YAML/JSON: {e}") from None
    if env is None:
        return {}
    if not isinstance(env, dict):
        raise SubmitError(f"--runtime-env {path}: the top level must be a mapping (pip, py_modules, env_vars, ...)")
    return env


_SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL")


def _env_vars(user: Any, path: str | None, environ: dict[str, str], notes: list[str]) -> dict[str, str]:
    if user is None:
        return {}
    if not isinstance(user, dict):
        raise SubmitError(f"--runtime-env {path}: env_vars must be a mapping of names to strings")
    out: dict[str, str] = {}
    for name, value in user.items():
        name = str(name)
        if name.upper() in CREDENTIAL_VARS:
            raise SubmitError(f"--runtime-env {path}: env_vars.{name}: credentials are never sent with a job (the "
                              "cluster stores and displays runtime environments); give the nodes an IAM instance "
                              "profile, IRSA or pod identity instead")
        if any(word in name.upper() for word in _SECRET_WORDS):
            notes.append(f"env_vars.{name} looks like a secret: the cluster stores runtime environments and shows "
                         "them in its dashboard; prefer giving the nodes this value from their own environment")
        if value is None:  # forward this machine's value
            if name in environ:
                out[name] = environ[name]
            continue
        if isinstance(value, (dict, list)):
            raise SubmitError(f"--runtime-env {path}: env_vars.{name}: expected a string")
        out[name] = value if isinstance(value, str) else json.dumps(value)
    return out


def _copy_working_dir(src: str, dst: Path, path: str | None) -> None:
    if "://" in src:
        raise SubmitError(f"--runtime-env {path}: working_dir {src!r} is remote; djray submit adds the resolved "
                          "config to the working directory, so it must be a local directory (ship code with "
                          "py_modules, data through S3)")
    src_path = Path(src).expanduser()  # relative paths: from the current directory, as `ray job submit` reads them
    if not src_path.is_dir():
        raise SubmitError(f"--runtime-env {path}: working_dir {src!r} is not a directory")
    shutil.copytree(src_path, dst, dirs_exist_ok=True, symlinks=True,
                    ignore=shutil.ignore_patterns(".git", "__pycache__", "*.pyc"))


def build_job(config: str, overrides: list[str], *, train: bool = False, runtime_env_file: str | None = None,
              environ: dict[str, str] | None = None) -> JobSpec:
    """Validate the config and assemble the job (entrypoint, runtime env, metadata). Writes only a temp directory.

    Raises ConfigError (config problems) or SubmitError (runtime-env problems); both mean exit 2.
    """
    from djray import __version__

    environ = dict(os.environ if environ is None else environ)
    kind = "train" if train else "govern"
    raw, metadata, notes = _resolve_config(config, overrides, kind)
    user_env = load_runtime_env(runtime_env_file)
    env = {k: v for k, v in user_env.items() if k not in ("working_dir", "env_vars", "py_modules")}
    env_vars = _env_vars(user_env.get("env_vars"), runtime_env_file, environ, notes)
    env_vars.setdefault("PYTHONUNBUFFERED", "1")  # logs reach `ray job logs` / --wait as they are printed

    py_modules = user_env.get("py_modules") or []
    if not isinstance(py_modules, list):
        raise SubmitError(f"--runtime-env {runtime_env_file}: py_modules must be a list")
    checkout = source_checkout()
    if checkout is not None:
        pkg = str(package_dir())
        if pkg not in [str(p) for p in py_modules]:
            py_modules = [*py_modules, pkg]
        metadata["djray_shipped_from"] = "source checkout (py_modules)"
    else:
        notes.append("djray is not installed from a source checkout here: the cluster's image must provide djray "
                     f"{__version__} (add py_modules to --runtime-env to ship another build)")
    if py_modules:
        env["py_modules"] = py_modules

    workdir = Path(tempfile.mkdtemp(prefix="djray-submit-"))
    try:
        if user_env.get("working_dir") is not None:
            _copy_working_dir(str(user_env["working_dir"]), workdir, runtime_env_file)
        header = (f"# Resolved by `djray submit` from {Path(config).name}"
                  + (f" with --set {' --set '.join(overrides)}" if overrides else "") + ".")
        header = " ".join(header.split()) + "\n"  # one comment line whatever the overrides contain
        (workdir / CONFIG_NAME).write_text(header + yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        env["working_dir"] = str(workdir)
        env["env_vars"] = env_vars
        _validate_runtime_env(env, runtime_env_file)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    metadata["djray_version"] = __version__
    entrypoint = f"python -m {ENTRYPOINT_MODULES[kind]} {CONFIG_NAME}"
    return JobSpec(kind=kind, entrypoint=entrypoint, runtime_env=env, metadata=metadata, workdir=workdir, notes=notes)


def _validate_runtime_env(env: dict[str, Any], path: str | None) -> None:
    """Ray's own parsing of the runtime env (types, pip/conda files), before anything is uploaded."""
    try:
        from ray.runtime_env import RuntimeEnv

        RuntimeEnv(**env)
    except (TypeError, ValueError) as e:
        raise SubmitError(f"--runtime-env {path}: {e}") from None
