"""infra/: every manifest parses, validates where a schema exists offline, names only
flags the real CLI accepts, and holds no literal secret."""

from __future__ import annotations

import pathlib
import re
import shlex

import kubernetes_validate
import pytest
import yaml

from vip2scan.jobs.cli import parse_command_line
from vip2scan.jobs.errors import UsageError

ROOT = pathlib.Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
K8S_FILES = sorted((INFRA / "k8s").glob("*.yaml"))
ALL_YAML = sorted(INFRA.rglob("*.yaml"))
KUBERNETES_VERSION = "1.31.0"


def _documents(path: pathlib.Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _k8s_objects() -> list[tuple[str, dict]]:
    return [(f"{p.name}:{d['kind']}", d) for p in K8S_FILES for d in _documents(p)]


def _by_kind(kind: str) -> list[dict]:
    return [d for _, d in _k8s_objects() if d["kind"] == kind]


# ---------------------------------------------------------------- parsing and schemas


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: str(p.relative_to(INFRA)))
def test_yaml_parses(path: pathlib.Path) -> None:
    assert _documents(path), f"{path} holds no document"


@pytest.mark.parametrize(
    "name,obj",
    [o for o in _k8s_objects() if not o[1]["apiVersion"].startswith("ray.io/")],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_kubernetes_objects_validate_against_the_schema(name: str, obj: dict) -> None:
    # kubernetes-validate ships the upstream OpenAPI schemas, so this runs offline; strict
    # mode also rejects misspelt fields.
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_kuberay_objects_have_the_fields_we_rely_on() -> None:
    # No KubeRay CRD schema can be installed from the package registries here, so the
    # fields our deployment depends on are checked directly.
    (cluster,) = _by_kind("RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    assert cluster["spec"]["enableInTreeAutoscaling"] is True
    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    (gpu_group,) = cluster["spec"]["workerGroupSpecs"]
    assert gpu_group["minReplicas"] == 0 and gpu_group["maxReplicas"] >= 1
    pod = gpu_group["template"]["spec"]
    (worker,) = pod["containers"]
    for section in ("requests", "limits"):
        assert worker["resources"][section]["nvidia.com/gpu"] == 1
        assert int(worker["resources"][section]["cpu"]) >= 8, "decode needs CPUs per GPU"
    assert pod["nodeSelector"] and pod["tolerations"][0]["key"] == "nvidia.com/gpu"

    jobs = _by_kind("RayJob")
    assert {j["metadata"]["name"] for j in jobs} == {"vip2scan-scan", "vip2scan-train"}
    for job in jobs:
        assert job["apiVersion"] == "ray.io/v1"
        assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
        assert job["spec"]["entrypoint"].startswith("vip2scan ")


def test_nightly_schedule_forbids_overlap() -> None:
    (cron,) = _by_kind("CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert len(cron["spec"]["schedule"].split()) == 5
    (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "submit"
    # The submitter must follow the job to its end, or Forbid would not prevent overlap.
    assert "--wait" in container["args"][: container["args"].index("--")]


# ---------------------------------------------------------------- secrets


def _env_entries():
    for name, obj in _k8s_objects():
        for container in _containers(obj):
            for env in container.get("env", []):
                yield name, container["name"], env


def _containers(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "containers":
                yield from value
            else:
                yield from _containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from _containers(item)


SECRET_PATTERNS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
    re.compile(r"(?i)aws_secret_access_key\s*[:=]\s*\S+"),
    re.compile(r"(?i)aws_session_token\s*[:=]\s*\S+"),
    re.compile(r"(?i)(password|secret|token)\s*[:=]\s*['\"]?[A-Za-z0-9/+]{16,}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"https?://[^/\s:@]+:[^/\s@]+@"),  # credentials inside a URL
]


@pytest.mark.parametrize("path", sorted(p for p in INFRA.rglob("*") if p.is_file()), ids=str)
def test_no_literal_secret_under_infra(path: pathlib.Path) -> None:
    text = path.read_text()
    hits = [p.pattern for p in SECRET_PATTERNS if p.search(text)]
    assert hits == []


def test_no_kubernetes_secret_objects_with_data() -> None:
    assert not [d for _, d in _k8s_objects() if d["kind"] == "Secret"]


def test_credential_like_env_vars_come_from_secrets() -> None:
    sensitive = re.compile(r"(?i)(TOKEN|SECRET|PASSWORD|ACCESS_KEY|SESSION)")
    for name, container, env in _env_entries():
        if sensitive.search(env["name"]):
            assert "value" not in env, f"{name}/{container}: {env['name']} is a literal"
            assert env["valueFrom"]["secretKeyRef"]["name"]


# ---------------------------------------------------------------- command lines


def _command_lines() -> list[tuple[str, list[str]]]:
    lines = []
    for name, obj in _k8s_objects():
        if obj["kind"] == "RayJob":
            lines.append((name, shlex.split(obj["spec"]["entrypoint"])[1:]))
        for container in _containers(obj):
            if container.get("args") and container["image"].split("/")[-1].startswith("vip2scan"):
                lines.append((f"{name}/{container['name']}", list(container["args"])))
    lines += _docs_cluster_lines()
    return lines


def _docs_cluster_lines() -> list[tuple[str, list[str]]]:
    text = (ROOT / "docs" / "guide" / "cluster.md").read_text()
    lines = []
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("vip2scan "):
                lines.append(("docs/guide/cluster.md", shlex.split(line)[1:]))
    assert lines, "docs/guide/cluster.md names no vip2scan command"
    return lines


COMMAND_LINES = _command_lines()


@pytest.mark.parametrize("where,argv", COMMAND_LINES, ids=[w for w, _ in COMMAND_LINES])
def test_command_lines_parse_with_the_real_cli(where: str, argv: list[str]) -> None:
    if argv[0] == "submit":
        # `submit [options] -- COMMAND ...`: both halves must parse.
        assert parse_command_line(argv).command.name == "submit"
        argv = argv[argv.index("--") + 1 :]
    ctx = parse_command_line(argv)
    assert ctx.command.name == (argv[0] if argv[0] != "jobs" else argv[1])


def test_a_renamed_flag_breaks_the_parse() -> None:
    with pytest.raises(UsageError):
        parse_command_line(["scan", "s3://lake", "--out", "s3://out", "--no-such-flag"])
    with pytest.raises(UsageError):
        parse_command_line(["submit", "--no-such-flag", "--", "scan", "s3://lake"])


# ---------------------------------------------------------------- image


def test_image_pins_every_runtime_dependency() -> None:
    import tomllib

    from packaging.requirements import Requirement

    pins = {}
    for line in (INFRA / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        req = Requirement(dep)
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not pinned in infra/constraints.txt"
        assert req.specifier.contains(pins[name]), f"{name}=={pins[name]} violates {req}"


def test_dockerfile_runs_as_non_root_without_credentials() -> None:
    text = (INFRA / "Dockerfile").read_text()
    assert "--constraint constraints.txt" in text
    assert re.search(r"^USER (?!root|0\b)\S+", text, re.M)
    assert re.search(r'^ENTRYPOINT \["vip2scan"\]', text, re.M)
    assert not re.search(r"(?i)^(ENV|ARG)\s+\S*(AWS_|TOKEN|SECRET|PASSWORD)", text, re.M)
