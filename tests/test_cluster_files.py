"""The cluster files are consistent with each other and with the package: they parse, the AWS launcher config passes
Ray's own schema, every file, entrypoint and extra they name exists, and versions agree with pyproject.toml and
constraints.txt. (Nothing here launches anything: the images cannot be built without a Docker engine.)"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from djray import job_spec

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
DOCKERFILES = {"cpu": REPO / "docker" / "Dockerfile.cpu", "gpu": REPO / "docker" / "Dockerfile.gpu"}
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]
VERSION = PYPROJECT["project"]["version"]
IMAGE_RE = re.compile(r"\bdjray:(?P<version>[\w.]+)-(?P<kind>cpu|gpu)\b")


def _pin(requirements: list[str], name: str) -> str:
    """The exact version `name==X` (extras allowed: `ray[default]==X`) pinned in a requirement list."""
    for req in requirements:
        m = re.fullmatch(rf"{re.escape(name)}(\[[\w,]+\])?==([\w.]+)", req.replace(" ", ""))
        if m:
            return m.group(2)
    raise AssertionError(f"{name} is not pinned with == in {requirements}")


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.strip().lower()] = version.strip()
    return pins


RAY_VERSION = _pin(PYPROJECT["project"]["dependencies"], "ray")


def _yaml_docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _aws() -> dict:
    return yaml.safe_load((CLUSTER / "aws.yaml").read_text())


def _kuberay(kind: str) -> dict:
    found = [d for p in sorted((CLUSTER / "kuberay").glob("*.yaml")) for d in _yaml_docs(p) if d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} under cluster/kuberay, found {len(found)}"
    return found[0]


# ---- every YAML parses -----------------------------------------------------------------------------------------------


def test_every_cluster_yaml_parses():
    files = sorted(CLUSTER.rglob("*.yaml"))
    assert {p.relative_to(CLUSTER).as_posix() for p in files} >= {
        "aws.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml"}
    for path in files:
        docs = _yaml_docs(path)
        assert docs and all(isinstance(d, dict) for d in docs), path


def test_no_credentials_in_cluster_files():
    pattern = re.compile(r"aws_access_key_id|aws_secret_access_key|aws_session_token|AKIA[0-9A-Z]{16}", re.I)
    for path in [*CLUSTER.rglob("*.yaml"), *DOCKERFILES.values()]:
        assert not pattern.search(path.read_text()), path


# ---- AWS: Ray's cluster-launcher schema --------------------------------------------------------------------------------


def test_aws_config_passes_rays_launcher_schema():
    jsonschema = pytest.importorskip("jsonschema")
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = _aws()
    jsonschema.validate(config, schema)
    from ray.autoscaler._private.util import validate_config  # what `ray up` runs (schema + cross-field checks)

    validate_config(config)


def test_aws_node_types():
    config = _aws()
    types = config["available_node_types"]
    assert config["provider"]["type"] == "aws"
    assert config["head_node_type"] in types
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and not head["resources"].get("GPU")
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    cpu = [n for n, t in workers.items() if not t["resources"].get("GPU")]
    gpu = [n for n, t in workers.items() if t["resources"].get("GPU")]
    assert cpu and len(gpu) >= 2, "a CPU group and GPU groups for scoring and for vLLM/training"
    assert any(types[n]["node_config"]["InstanceType"].startswith(("g5.", "g6.")) for n in gpu)
    assert any(types[n]["node_config"]["InstanceType"].startswith(("p4d.", "p4de.", "p5.")) for n in gpu)
    for name, t in workers.items():
        assert 0 <= t["min_workers"] <= t["max_workers"], name
        assert t.get("idle_timeout_s", 0) > 0, name
    assert config["idle_timeout_minutes"] > 0
    assert sum(t["min_workers"] for t in workers.values()) <= config["max_workers"]
    for name, t in types.items():
        # object-store access through an instance profile, never keys
        assert "IamInstanceProfile" in t["node_config"], name
    # images: the CPU image by default, the GPU image on GPU node types
    assert IMAGE_RE.search(config["docker"]["image"]).group("kind") == "cpu"
    for name in gpu:
        assert IMAGE_RE.search(types[name]["docker"]["worker_image"]).group("kind") == "gpu", name
    for name in cpu:
        assert "worker_image" not in types[name].get("docker", {}), name


# ---- KubeRay ---------------------------------------------------------------------------------------------------------------


def test_raycluster_groups_match_the_aws_node_types():
    rc = _kuberay("RayCluster")
    spec = rc["spec"]
    assert rc["apiVersion"] == "ray.io/v1"
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["rayVersion"] == RAY_VERSION
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    aws_types = _aws()["available_node_types"]
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == set(aws_types) - {_aws()["head_node_type"]}
    for name, g in groups.items():
        assert 0 <= g["minReplicas"] <= g["maxReplicas"], name
        assert g.get("idleTimeoutSeconds", 0) > 0, name
        pod = g["template"]["spec"]
        (container,) = pod["containers"]
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        want_gpus = aws_types[name]["resources"].get("GPU", 0)
        image_kind = IMAGE_RE.search(container["image"]).group("kind")
        assert pod["nodeSelector"], name
        if want_gpus:
            assert int(limits["nvidia.com/gpu"]) == int(requests["nvidia.com/gpu"]) == want_gpus, name
            assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"]), name
            assert image_kind == "gpu", name
        else:
            assert "nvidia.com/gpu" not in limits and image_kind == "cpu", name
        # the same instance type as the AWS node type
        assert pod["nodeSelector"]["node.kubernetes.io/instance-type"] == \
            aws_types[name]["node_config"]["InstanceType"], name


def test_rayjob_runs_the_demo_on_the_raycluster():
    job = _kuberay("RayJob")
    rc = _kuberay("RayCluster")
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == rc["metadata"]["name"]
    entry = job["spec"]["entrypoint"]
    assert "python jobs/govern.py configs/demo.yaml" in entry
    assert entry.index("djray sample-data") < entry.index("jobs/govern.py"), "the demo corpus must exist first"
    # the corpus and the output live on the volume every Ray pod mounts
    mounts = {m["mountPath"] for m in rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    for g in rc["spec"]["workerGroupSpecs"]:
        mounts &= {m["mountPath"] for m in g["template"]["spec"]["containers"][0]["volumeMounts"]}
    for path in re.findall(r"(?:input|output)\.path=(\S+)", entry) + re.findall(r"sample-data (\S+)", entry):
        assert any(path.startswith(m + "/") for m in mounts), path
    claims = {v["persistentVolumeClaim"]["claimName"] for v in rc["spec"]["headGroupSpec"]["template"]["spec"]["volumes"]
              if "persistentVolumeClaim" in v}
    pvcs = {d["metadata"]["name"] for p in (CLUSTER / "kuberay").glob("*.yaml") for d in _yaml_docs(p)
            if d.get("kind") == "PersistentVolumeClaim"}
    assert claims <= pvcs
    accounts = {d["metadata"]["name"] for p in (CLUSTER / "kuberay").glob("*.yaml") for d in _yaml_docs(p)
                if d.get("kind") == "ServiceAccount"}
    assert rc["spec"]["headGroupSpec"]["template"]["spec"]["serviceAccountName"] in accounts


def test_token_authentication_is_on_and_the_token_is_never_in_a_file_of_the_repository():
    """KubeRay: authOptions (the operator keeps the token in a Secret). AWS: every `ray start` runs with
    RAY_AUTH_MODE=token and the token file is synced from the machine running `ray up`, not baked into an image."""
    assert _kuberay("RayCluster")["spec"]["authOptions"] == {"mode": "token"}
    aws = _aws()
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in aws[key] if "ray start" in c]
        assert starts and all("export RAY_AUTH_MODE=token;" in c for c in starts), key
    assert aws["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    for path in [*CLUSTER.rglob("*.yaml"), *DOCKERFILES.values()]:
        text = path.read_text()
        assert "RAY_AUTH_TOKEN=" not in text.replace("export RAY_AUTH_TOKEN=$(", ""), path  # no token value


# ---- names that must exist ---------------------------------------------------------------------------------------------

NAMED = re.compile(r"(?<![\w/.-])((?:jobs/[\w-]+\.py)|(?:configs/[\w.-]+\.ya?ml)|(?:docker/Dockerfile\.\w+)"
                   r"|(?:cluster/[\w/-]+\.ya?ml)|(?:docs/[\w-]+\.md)|(?:benchmarks/[\w-]+\.py))")


@pytest.mark.parametrize("source", ["cluster/aws.yaml", "cluster/kuberay/raycluster.yaml",
                                    "cluster/kuberay/rayjob.yaml", "cluster/kuberay/prereqs.yaml", "jobs/README.md",
                                    "docs/cluster.md", "docker/Dockerfile.cpu", "docker/Dockerfile.gpu",
                                    "djray/submit.py", "djray/job_spec.py"])
def test_every_named_file_exists(source):
    text = (REPO / source).read_text()
    named = set(NAMED.findall(text))
    missing = sorted(n for n in named if not (REPO / n).exists())
    assert not missing, f"{source} names files that do not exist: {missing}"


def test_images_named_in_cluster_files_have_a_dockerfile_and_the_package_version():
    for path in CLUSTER.rglob("*.yaml"):
        for m in IMAGE_RE.finditer(path.read_text()):
            assert m.group("version") == VERSION, (path, m.group(0))
            assert DOCKERFILES[m.group("kind")].is_file()
    for kind, dockerfile in DOCKERFILES.items():
        assert f"djray:{VERSION}-{kind}" in dockerfile.read_text(), dockerfile


def test_repository_job_scripts_call_the_package_entrypoints():
    for name, module in job_spec.ENTRYPOINT_MODULES.items():
        text = (REPO / "jobs" / f"{name}.py").read_text()
        assert f"from {module} import main" in text, f"jobs/{name}.py must call {module}"


# ---- Dockerfiles ---------------------------------------------------------------------------------------------------------


def _dockerfile(kind: str) -> tuple[str, list[str]]:
    text = DOCKERFILES[kind].read_text()
    logical = re.sub(r"\\\n", " ", text)  # join continuation lines
    return text, [line.strip() for line in logical.splitlines() if line.strip() and not line.strip().startswith("#")]


def _args(lines: list[str]) -> dict[str, str]:
    return dict(re.match(r"ARG (\w+)=(\S+)", line).groups() for line in lines if line.startswith("ARG ") and "=" in line)


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_dockerfile_copies_files_that_exist(kind):
    _, lines = _dockerfile(kind)
    copies = [line.split()[1:-1] for line in lines if line.startswith("COPY ")]
    assert copies
    for sources in copies:
        for src in sources:
            if not src.startswith("--"):
                assert (REPO / src).exists(), f"Dockerfile.{kind}: COPY {src}: no such file"
    ignore = DOCKERFILES[kind].with_name(DOCKERFILES[kind].name + ".dockerignore").read_text().split()
    for sources in copies:  # the build context filter keeps what the Dockerfile copies
        for src in sources:
            assert f"!{src.rstrip('/')}" in ignore or f"!{src.rstrip('/')}/" in ignore, (kind, src)


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_dockerfile_pins_and_extras(kind):
    text, lines = _dockerfile(kind)
    (base,) = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert ":" in base and not base.endswith(":latest"), base
    if kind == "gpu":
        assert base.startswith("nvidia/cuda:") and "cudnn" in base, base
    # extras installed exist in pyproject.toml
    installed = re.findall(r'"\.\[([\w,]+)\]"', "\n".join(lines))
    assert installed, "djray is installed with its extras"
    for group in installed:
        for extra in group.split(","):
            assert extra in EXTRAS, f"Dockerfile.{kind} installs extra {extra!r}, not in pyproject.toml"
    extras = {e for g in installed for e in g.split(",")}
    assert {"vision", "cluster"} <= extras
    # torch / torchvision: the CPU image = constraints.txt; the GPU image = the pins of the vLLM it installs (named in
    # its header, for the vLLM version pyproject.toml pins)
    args = _args(lines)
    if kind == "cpu":
        pins = _constraints()
    else:
        named = re.search(r"\(vllm ([\w.]+): torch==([\w.]+), torchvision==([\w.]+)\)", text)
        assert named, "Dockerfile.gpu names vLLM's torch pins in its header"
        assert named.group(1) == _pin(EXTRAS["gpu"], "vllm"), "the header names another vLLM than pyproject.toml"
        pins = {"torch": named.group(2), "torchvision": named.group(3)}
    assert (args["TORCH_VERSION"], args["TORCHVISION_VERSION"]) == (pins["torch"], pins["torchvision"]), kind
    assert re.search(r'"torch==\$\{TORCH_VERSION\}"', text) and re.search(
        r'"torchvision==\$\{TORCHVISION_VERSION\}"', text)
    # any version named in the file agrees with pyproject.toml
    for name, pinned in (("vllm", _pin(EXTRAS["gpu"], "vllm")), ("deepspeed", _pin(EXTRAS["gpu"], "deepspeed")),
                         ("ray", RAY_VERSION)):
        for found in re.findall(rf"\b{name}(?:\[\w+\])?==([\w.]+)", text):
            assert found == pinned, f"Dockerfile.{kind} names {name}=={found}, pyproject.toml pins {pinned}"
    if kind == "gpu":
        assert "gpu" in extras, "the GPU image carries vLLM and DeepSpeed"
    else:
        assert "gpu" not in extras and "download.pytorch.org/whl/cpu" in text


def test_pyproject_pins_agree():
    assert _pin(EXTRAS["cluster"], "ray") == RAY_VERSION
    _pin(EXTRAS["gpu"], "vllm")
    _pin(EXTRAS["gpu"], "deepspeed")
