"""Offline validation of the deploy files: docker-compose.yml (every profile), the Dockerfiles,
the Kubernetes manifests (strict schemas, KEDA's objects against deploy/schemas), Prometheus'
scrape configs (promtool) and the Grafana dashboard.

Needs Debian's docker-compose and prometheus (promtool) packages, which .ci/run installs; in CI
(CI set) a missing tool fails the test, elsewhere it skips it. Nothing here starts a container
or contacts a daemon. The same topology running without containers: test_deploy_topology.py.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = ROOT / "docker-compose.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "sdedit.json"
K8S_VERSIONS = ("1.28.0", kubernetes_validate.utils.latest_version())
DEFAULT_JOB_TIMEOUT_S = 900  # the README's default of SDEDIT_JOB_TIMEOUT_S
METRIC = re.compile(r"\b(sdedit_[a-z0-9_]+)")


def need(tool: str) -> str:
    """The tool's path; a missing tool fails in CI (.ci/run installs it) and skips elsewhere."""
    path = shutil.which(tool)
    if path is None:
        message = f"{tool} is not installed (Debian package; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


# --- docker compose ---------------------------------------------------------------------------

def env_file_values(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def compose_config(env_file: Path, profile: str | None = None, compose_file: Path = COMPOSE,
                   extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`docker-compose config` (Debian's docker-compose validates without a daemon), run with a
    clean environment so that nothing of the caller's leaks into the interpolation."""
    command = [need("docker-compose"), "-f", str(compose_file), "--project-directory", str(ROOT),
               "--env-file", str(env_file)]
    if profile:
        command += ["--profile", profile]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
           **(extra_env or {})}
    return subprocess.run(command + ["config"], capture_output=True, text=True, env=env,
                          timeout=120, check=False)


def rendered_compose(env_file: Path, profile: str | None = None,
                     extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    result = compose_config(env_file, profile, extra_env=extra_env)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def active_services(config: dict[str, Any], profile: str | None) -> set[str]:
    """What `docker compose [--profile P] up` starts: services without profiles, and those of P."""
    return {name for name, service in config["services"].items()
            if not service.get("profiles") or profile in service["profiles"]}


def seconds(duration: str) -> float:
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", duration):
        total += float(number) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}[unit]
    return total


@pytest.fixture(scope="module")
def example_env() -> Path:
    return ROOT / ".env.example"


@pytest.mark.parametrize("profile", [None, "cpu", "gpu"])
def test_compose_config_passes_for_every_profile(example_env: Path, profile: str | None):
    config = rendered_compose(example_env, profile)
    workers = {"cpu": {"worker-cpu"}, "gpu": {"worker-gpu"}}.get(profile or "", set())
    assert active_services(config, profile) == {"redis", "api", "prometheus", "grafana"} | workers
    secrets = env_file_values(example_env)
    password = secrets["SDEDIT_REDIS_PASSWORD"]
    redis = config["services"]["redis"]
    command = redis["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--requirepass") + 1] == password
    assert "ports" not in redis  # reached over the compose network only
    api = config["services"]["api"]
    assert api["command"] == ["sdedit", "api"]
    assert api["deploy"]["replicas"] == 2
    assert api["environment"]["SDEDIT_API_KEYS"] == secrets["SDEDIT_API_KEYS"]
    for name in ("api", "worker-cpu", "worker-gpu"):
        environment = config["services"][name]["environment"]
        assert environment["SDEDIT_REDIS_URL"] == f"redis://:{password}@redis:6379/0"
        assert json.loads(environment["SDEDIT_MODELS"]) == ["emoji"]


def test_compose_gpu_and_cpu_workers(example_env: Path):
    services = rendered_compose(example_env, "gpu")["services"]
    gpu, cpu = services["worker-gpu"], services["worker-cpu"]
    assert gpu["profiles"] == ["gpu"] and cpu["profiles"] == ["cpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert gpu["environment"]["SDEDIT_DEVICE"] == "cuda"
    assert "deploy" not in cpu and cpu["environment"]["SDEDIT_DEVICE"] == "cpu"
    assert cpu["build"]["args"]["TORCH_INDEX_URL"].endswith("/whl/cpu")
    for worker in (gpu, cpu):
        assert worker["command"] == ["sdedit", "worker"]
        assert worker["build"]["dockerfile"] == "deploy/docker/worker.Dockerfile"
        # Same settings apart from the device; a warm shutdown needs the job timeout to finish.
        assert {k: v for k, v in worker["environment"].items() if k != "SDEDIT_DEVICE"} == \
            {k: v for k, v in cpu["environment"].items() if k != "SDEDIT_DEVICE"}
        timeout = int(worker["environment"]["SDEDIT_JOB_TIMEOUT_S"])
        assert timeout == DEFAULT_JOB_TIMEOUT_S
        assert seconds(worker["stop_grace_period"]) >= timeout
        assert "worker" in worker["networks"]["monitoring"]["aliases"]


def test_compose_grace_period_follows_the_job_timeout(example_env: Path):
    services = rendered_compose(example_env, "cpu", {"SDEDIT_JOB_TIMEOUT_S": "1800"})["services"]
    assert services["api"]["environment"]["SDEDIT_JOB_TIMEOUT_S"] == "1800"
    assert seconds(services["worker-cpu"]["stop_grace_period"]) >= 1800


def test_compose_networks_keep_redis_private(example_env: Path):
    config = rendered_compose(example_env, "cpu")
    assert config["networks"]["data"]["internal"] is True
    on_data = {name for name, service in config["services"].items() if "data" in service["networks"]}
    assert on_data == {"redis", "api", "worker-cpu", "worker-gpu"}
    assert set(config["services"]["redis"]["networks"]) == {"data"}


def test_compose_monitoring_files_exist_and_match(example_env: Path):
    services = rendered_compose(example_env)["services"]
    mounts = {}
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source, target = volume.split(":")[:2]
            if source.startswith("/"):
                assert Path(source).exists(), source
                mounts[target] = Path(source)
    assert mounts["/etc/prometheus/prometheus.yml"] == DEPLOY / "prometheus" / "prometheus.yml"
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/sdedit.yml").read_text())
    dashboards_path = provider["providers"][0]["options"]["path"]
    assert mounts[dashboards_path] == DASHBOARD.parent
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml")
                                .read_text())["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    assert "9090:9090" in services["prometheus"]["ports"][0]
    # Prometheus finds the API replicas and the workers by their network aliases and ports.
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    by_job = {job["job_name"]: job["dns_sd_configs"][0] for job in scrape["scrape_configs"]}
    api, worker = by_job["sdedit-api"], by_job["sdedit-worker"]
    assert api["names"] == ["api"] and str(api["port"]) == services["api"]["environment"]["SDEDIT_PORT"]
    assert worker["names"] == ["worker"]
    assert str(worker["port"]) == services["worker-cpu"]["environment"]["SDEDIT_METRICS_PORT"]
    assert "api" in services["api"]["networks"]["monitoring"]["aliases"]


def test_compose_refuses_to_run_without_secrets(tmp_path: Path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = compose_config(empty, "cpu")
    assert result.returncode != 0
    assert "SDEDIT_REDIS_PASSWORD" in result.stderr


def test_compose_validation_bites(example_env: Path, tmp_path: Path):
    """A misspelt key in the GPU reservation is an error, so passing above means something."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("capabilities: [gpu]", "capability: [gpu]"))
    result = compose_config(example_env, "gpu", compose_file=broken)
    assert result.returncode != 0 and "capability" in result.stderr


def test_no_secret_is_committed(example_env: Path):
    """Secret values come from .env (ignored by git); the committed files hold placeholders."""
    secret_keys = ("SDEDIT_REDIS_PASSWORD", "SDEDIT_API_KEYS", "GRAFANA_ADMIN_PASSWORD")
    values = env_file_values(example_env)
    assert set(secret_keys) <= set(values)
    assert all("change-me" in values[key] for key in secret_keys)
    raw = COMPOSE.read_text()
    for key in secret_keys:  # every use is an interpolation that refuses to run when unset
        uses = re.findall(r"\$\{" + key + r"(:?[?-])?", raw)
        assert uses and all(use == ":?" for use in uses), key
    example_secrets = env_file_values(K8S / "base" / "secrets.env.example")
    assert all("change-me" in value for value in example_secrets.values())
    if shutil.which("git") and (ROOT / ".git").exists():
        for path in (".env", "deploy/k8s/base/secrets.env"):
            ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT, check=False)
            assert ignored.returncode == 0, f"{path} is not ignored by git"


# --- Dockerfiles ------------------------------------------------------------------------------

def dockerfile_final_stage(path: Path) -> list[str]:
    """The instructions of the last stage, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    last_from = max(i for i, line in enumerate(lines) if line.upper().startswith("FROM "))
    return lines[last_from:]


@pytest.mark.parametrize("part", ["api", "worker"])
def test_dockerfiles_run_as_non_root_with_a_healthcheck(part: str):
    path = DEPLOY / "docker" / f"{part}.Dockerfile"
    stage = dockerfile_final_stage(path)
    users = [line.split()[1] for line in stage if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    healthchecks = [line for line in stage if line.startswith("HEALTHCHECK ")]
    assert len(healthchecks) == 1
    assert healthchecks[0].endswith(f'CMD ["python", "/usr/local/bin/sdedit-healthcheck", "{part}"]')
    assert any(line.startswith("COPY deploy/docker/healthcheck.py /usr/local/bin/sdedit-healthcheck")
               for line in stage)
    assert stage[-1] == f'CMD ["sdedit", "{part}"]'
    # The context's allow-list (BuildKit's <Dockerfile>.dockerignore) holds every package
    # pyproject.toml installs, and the files its metadata needs.
    allowed = {line[1:].removesuffix("/**") for line in
               Path(f"{path}.dockerignore").read_text().splitlines() if line.startswith("!")}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()
                and any(re.fullmatch(pattern.replace("*", ".*"), p.name) for pattern in patterns)}
    assert packages and packages <= allowed
    assert {"pyproject.toml", pyproject["project"]["readme"], "deploy/docker/healthcheck.py"} <= allowed


def test_api_image_installs_no_torch():
    runs = " ".join(line for line in re.sub(r"\\\n\s*", " ", (DEPLOY / "docker/api.Dockerfile")
                                            .read_text()).splitlines() if line.startswith("RUN "))
    assert "pip install --no-cache-dir /src" in runs and "[" not in runs and "torch" not in runs
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"])
    assert "torch" not in base and "diffusers" not in base
    assert any(d.startswith("torch") for d in project["optional-dependencies"]["worker"])


def test_worker_image_cuda_by_default_cpu_by_build_arg():
    text = (DEPLOY / "docker/worker.Dockerfile").read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.M)
    assert base and base.group(1).startswith("pytorch/pytorch:") and "cuda" in base.group(1)
    assert re.search(r"^ARG TORCH_INDEX_URL=$", text, re.M)
    assert 'pip install --no-cache-dir "/src[worker]"' in text


def test_healthcheck_reports_unreachable_and_metrics_off():
    script = DEPLOY / "docker" / "healthcheck.py"
    import socket

    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    for part, variable in (("api", "SDEDIT_PORT"), ("worker", "SDEDIT_METRICS_PORT")):
        result = subprocess.run([sys.executable, str(script), part], capture_output=True, text=True,
                                env={**os.environ, variable: port}, timeout=30, check=False)
        assert result.returncode == 1 and "unreachable" in result.stdout
    result = subprocess.run([sys.executable, str(script), "worker"], capture_output=True, text=True,
                            env={**os.environ, "SDEDIT_METRICS_PORT": "0"}, timeout=30, check=False)
    assert result.returncode == 1 and "SDEDIT_METRICS_PORT=0" in result.stdout


# --- Kubernetes -------------------------------------------------------------------------------

def json_pointer(path: str) -> list[str]:
    return [part.replace("~1", "/").replace("~0", "~") for part in path.split("/")[1:]]


def apply_json_patch(document: dict[str, Any], operations: list[dict[str, Any]]) -> None:
    """RFC 6902 add, remove, replace and test: what the overlays use."""
    for op in operations:
        *parents, last = json_pointer(op["path"])
        node: Any = document
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key: Any = int(last) if isinstance(node, list) and last != "-" else last
        if op["op"] == "test":
            assert node[key] == op["value"], f"patch test failed at {op['path']}"
        elif op["op"] == "remove":
            del node[key]
        elif op["op"] == "replace":
            node[key]  # noqa: B018 - replace needs an existing target (KeyError otherwise)
            node[key] = copy.deepcopy(op["value"])
        elif op["op"] == "add":
            if isinstance(node, list):
                node.insert(len(node) if key == "-" else key, copy.deepcopy(op["value"]))
            else:
                node[key] = copy.deepcopy(op["value"])
        else:
            raise AssertionError(f"unsupported patch operation {op['op']}")


def kustomize(folder: Path) -> list[dict[str, Any]]:
    """Render a kustomization the way `kustomize build` does, for the features used here
    (resources, namespace, secretGenerator from env files, JSON patches with a target, images);
    test_kustomize_renderer_matches_kubectl checks it against the real tool where present."""
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    known = {"apiVersion", "kind", "namespace", "resources", "secretGenerator", "generatorOptions",
             "patches", "images"}
    assert set(spec) <= known, f"this renderer does not know {set(spec) - known}"
    documents: list[dict[str, Any]] = []
    for resource in spec.get("resources", []):
        path = folder / resource
        if path.is_dir():
            documents += kustomize(path)
        else:
            documents += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for generator in spec.get("secretGenerator", []):
        assert set(generator) == {"name", "envs"}
        assert spec["generatorOptions"] == {"disableNameSuffixHash": True}
        data = {}
        for env in generator["envs"]:
            data.update({k: base64.b64encode(v.encode()).decode()
                         for k, v in env_file_values(folder / env).items()})
        documents.append({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                          "metadata": {"name": generator["name"]}, "data": data})
    for patch in spec.get("patches", []):
        target = patch["target"]
        matches = [d for d in documents if d["kind"] == target["kind"]
                   and d["metadata"]["name"] == target["name"]
                   and d["apiVersion"] == f"{target['group']}/{target['version']}".lstrip("/")]
        assert len(matches) == 1, patch
        apply_json_patch(matches[0], yaml.safe_load((folder / patch["path"]).read_text()))
    for image in spec.get("images", []):  # what `kustomize edit set image` writes
        for document in documents:
            pod = document.get("spec", {}).get("template", {}).get("spec", {})
            for container in pod.get("containers", []):
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    container["image"] = (f"{image.get('newName', name)}:"
                                          f"{image.get('newTag', tag)}")
    if "namespace" in spec:
        for document in documents:
            if document["kind"] != "Namespace":
                document["metadata"]["namespace"] = spec["namespace"]
    return documents


@pytest.fixture(scope="module")
def k8s_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of deploy/k8s with secrets.env made from its committed example."""
    tree = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("secrets.env"))
    shutil.copy(tree / "base" / "secrets.env.example", tree / "base" / "secrets.env")
    return tree


@pytest.fixture(scope="module")
def rendered(k8s_tree: Path) -> dict[str, list[dict[str, Any]]]:
    return {"base": kustomize(k8s_tree / "base"), "cpu": kustomize(k8s_tree / "overlays" / "cpu")}


def by_kind(documents: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in documents if d["kind"] == kind}


def keda_schema(kind: str) -> jsonschema.Draft202012Validator:
    name = {"ScaledObject": "keda-scaledobject-redis", "TriggerAuthentication":
            "keda-triggerauthentication"}[kind]
    schema = json.loads((DEPLOY / "schemas" / f"{name}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("variant", ["base", "cpu"])
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifests_pass_strict_validation(rendered, variant: str, version: str):
    kinds = set()
    for document in rendered[variant]:
        kinds.add(document["kind"])
        if document["apiVersion"].startswith("keda.sh/"):
            errors = list(keda_schema(document["kind"]).iter_errors(document))
            assert not errors, [e.message for e in errors]
        else:  # raises on a schema violation, or when the kind has no schema at all
            kubernetes_validate.validate(document, version, strict=True)
    assert kinds == {"Namespace", "ConfigMap", "Secret", "Service", "StatefulSet", "Deployment",
                     "HorizontalPodAutoscaler", "PodDisruptionBudget", "ScaledObject",
                     "TriggerAuthentication", "NetworkPolicy"}


def test_k8s_validation_bites(rendered):
    """Strict validation and the KEDA schema reject a misspelt field and a wrong type."""
    worker = copy.deepcopy(by_kind(rendered["base"], "Deployment")["sdedit-worker"])
    worker["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 960
    with pytest.raises(kubernetes_validate.utils.ValidationError):
        kubernetes_validate.validate(worker, K8S_VERSIONS[-1], strict=True)
    scaled = by_kind(rendered["base"], "ScaledObject")["sdedit-worker"]
    validator = keda_schema("ScaledObject")
    for mutate in (lambda m: m.update(listname=m.pop("listName")),
                   lambda m: m.update(listLength=8),
                   lambda m: m.pop("address")):
        broken = copy.deepcopy(scaled)
        mutate(broken["spec"]["triggers"][0]["metadata"])
        assert list(validator.iter_errors(broken))


def test_kustomize_renderer_matches_kubectl(k8s_tree: Path, rendered):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; the renderer's output is validated all the same")
    for variant, folder in (("base", "base"), ("cpu", "overlays/cpu")):
        output = subprocess.run([kubectl, "kustomize", str(k8s_tree / folder)], capture_output=True,
                                text=True, timeout=60, check=True).stdout
        real = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(output) if d}
        ours = {(d["kind"], d["metadata"]["name"]): d for d in rendered[variant]}
        assert real == ours


def pod_templates(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d["spec"]["template"] for d in documents
            if d["kind"] in ("Deployment", "StatefulSet")}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        present, values = expression["key"] in labels, expression.get("values", [])
        ok = {"In": present and labels.get(expression["key"]) in values,
              "NotIn": labels.get(expression["key"]) not in values,
              "Exists": present, "DoesNotExist": not present}[expression["operator"]]
        if not ok:
            return False
    return True


@pytest.mark.parametrize("variant", ["base", "cpu"])
def test_k8s_references_are_consistent(rendered, variant: str):
    documents = rendered[variant]
    templates = pod_templates(documents)
    config = by_kind(documents, "ConfigMap")["sdedit-config"]["data"]
    secret = by_kind(documents, "Secret")["sdedit-secrets"]["data"]
    for name, workload in {**by_kind(documents, "Deployment"),
                           **by_kind(documents, "StatefulSet")}.items():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert selects(workload["spec"]["selector"], labels), name
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for container in pod["containers"]:
            defined: set[str] = set()
            for variable in container.get("env", []):
                # $(VAR) expands only from variables defined earlier in the same list.
                for reference in re.findall(r"\$\(([A-Z_]+)\)", variable.get("value", "")):
                    assert reference in defined, (name, variable["name"], reference)
                key_ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if key_ref:
                    assert key_ref["name"] == "sdedit-secrets" and key_ref["key"] in secret
                defined.add(variable["name"])
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] == "sdedit-config"
            for argument in container.get("args", []):
                for reference in re.findall(r"\$\(([A-Z_]+)\)", argument):
                    assert reference in defined, (name, argument)
    services = by_kind(documents, "Service")
    for name, service in services.items():
        targets = [t for t, template in templates.items()
                   if selects({"matchLabels": service["spec"]["selector"]},
                              template["metadata"]["labels"])]
        assert len(targets) == 1, name
        ports = {p["name"] for c in templates[targets[0]]["spec"]["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
    hpa = by_kind(documents, "HorizontalPodAutoscaler")["sdedit-api"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "sdedit-api" and hpa["minReplicas"] >= 2
    pdb = by_kind(documents, "PodDisruptionBudget")["sdedit-api"]["spec"]
    assert [t for t, tpl in templates.items()
            if selects(pdb["selector"], tpl["metadata"]["labels"])] == ["sdedit-api"]
    # Every pod's Redis URL points at the Redis Service, with the password of the Secret.
    redis_port = services["sdedit-redis"]["spec"]["ports"][0]["port"]
    for name in ("sdedit-api", "sdedit-worker"):
        env = {v["name"]: v for v in templates[name]["spec"]["containers"][0]["env"]}
        assert env["SDEDIT_REDIS_URL"]["value"] == \
            f"redis://:$(REDIS_PASSWORD)@sdedit-redis:{redis_port}/0"
        assert "SDEDIT_REDIS_URL" not in config
    # Prometheus' pod annotations name real container ports (deploy/prometheus/kubernetes.yml).
    for name in ("sdedit-api", "sdedit-worker"):
        template = templates[name]
        port = int(template["metadata"]["annotations"]["prometheus.io/port"])
        assert port in {p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}


@pytest.mark.parametrize("variant", ["base", "cpu"])
def test_k8s_workers_shut_down_warm_and_scale_on_their_queues(rendered, variant: str):
    documents = rendered[variant]
    config = by_kind(documents, "ConfigMap")["sdedit-config"]["data"]
    worker = by_kind(documents, "Deployment")["sdedit-worker"]
    pod = worker["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["sdedit", "worker"]
    assert "replicas" not in worker["spec"]  # KEDA owns the count
    timeout = int(config.get("SDEDIT_JOB_TIMEOUT_S", DEFAULT_JOB_TIMEOUT_S))
    assert pod["terminationGracePeriodSeconds"] >= timeout
    hook = container["lifecycle"]["preStop"]["exec"]["command"]
    assert hook[:2] == ["sh", "-c"] and "kill -TERM" in hook[2]  # run for real in the topology test
    env = {v["name"]: v.get("value") for v in container["env"]}
    resources = container["resources"]
    if variant == "base":
        assert resources["limits"]["nvidia.com/gpu"] == 1
        assert resources["requests"]["nvidia.com/gpu"] == 1
        assert env["SDEDIT_DEVICE"] == "cuda"
    else:
        assert "nvidia.com/gpu" not in json.dumps(documents) and "tolerations" not in pod
        assert env["SDEDIT_DEVICE"] == "cpu" and container["image"].startswith("sdedit-worker-cpu:")
    # KEDA: one redis trigger per model queue (RQ's lists rq:queue:sdedit:<model> and
    # rq:queue:sdedit:<model>@batch), 0..N, activation.
    scaled = by_kind(documents, "ScaledObject")["sdedit-worker"]["spec"]
    assert scaled["scaleTargetRef"]["name"] == "sdedit-worker"
    assert scaled["minReplicaCount"] == 0 and scaled["maxReplicaCount"] >= 1
    models = json.loads(config["SDEDIT_MODELS"])
    triggers = scaled["triggers"]
    assert {t["metadata"]["listName"] for t in triggers} == {
        f"rq:queue:sdedit:{m}{suffix}" for m in models for suffix in ("", "@batch")}
    assert "rq:queue:sdedit:emoji" in {t["metadata"]["listName"] for t in triggers}
    services = by_kind(documents, "Service")
    redis_service = services["sdedit-redis"]
    namespace = redis_service["metadata"]["namespace"]
    authentications = by_kind(documents, "TriggerAuthentication")
    secret = by_kind(documents, "Secret")["sdedit-secrets"]["data"]
    for trigger in triggers:
        metadata = trigger["metadata"]
        assert int(metadata["activationListLength"]) >= 0 and int(metadata["listLength"]) >= 1
        host, port = metadata["address"].rsplit(":", 1)
        assert host.split(".")[:2] == ["sdedit-redis", namespace]
        assert int(port) == redis_service["spec"]["ports"][0]["port"]
        auth = authentications[trigger["authenticationRef"]["name"]]["spec"]["secretTargetRef"]
        assert {(a["parameter"], a["name"]) for a in auth} == {("password", "sdedit-secrets")}
        assert all(a["key"] in secret for a in auth)


def test_k8s_only_the_api_and_workers_reach_redis(rendered):
    documents = rendered["base"]
    templates = pod_templates(documents)
    policy = by_kind(documents, "NetworkPolicy")["sdedit-redis"]["spec"]
    protected = [n for n, t in templates.items() if selects(policy["podSelector"],
                                                              t["metadata"]["labels"])]
    assert protected == ["sdedit-redis"] and policy["policyTypes"] == ["Ingress"]
    [rule] = policy["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]
    same_namespace = [peer["podSelector"] for peer in rule["from"] if "namespaceSelector" not in peer]
    admitted = {n for n, t in templates.items()
                if any(selects(s, t["metadata"]["labels"]) for s in same_namespace)}
    assert admitted == {"sdedit-api", "sdedit-worker"}
    # The one other peer is KEDA's operator, whose redis scaler reads the queue lengths.
    [keda] = [peer for peer in rule["from"] if "namespaceSelector" in peer]
    assert keda["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "keda"}
    assert keda["podSelector"]["matchLabels"] == {"app": "keda-operator"}


# --- Prometheus and Grafana -------------------------------------------------------------------

def promtool_check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([need("promtool"), "check", "config", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)


def test_prometheus_compose_config_passes_promtool():
    result = promtool_check(DEPLOY / "prometheus" / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_kubernetes_config(tmp_path: Path, rendered):
    path = DEPLOY / "prometheus" / "kubernetes.yml"
    result = promtool_check(path)
    config = yaml.safe_load(path.read_text())
    if "kubernetes_sd_configs not found" in result.stdout + result.stderr:
        # Debian builds Prometheus without Kubernetes discovery: check the rest of the file
        # (relabel rules and their regexes) with static targets in its place.
        for job in config["scrape_configs"]:
            job.pop("kubernetes_sd_configs")
            job["static_configs"] = [{"targets": ["10.0.0.1:8000"]}]
        stripped = tmp_path / "kubernetes.yml"
        stripped.write_text(yaml.safe_dump(config))
        result = promtool_check(stripped)
    assert result.returncode == 0, result.stdout + result.stderr
    raw = yaml.safe_load(path.read_text())
    compose_jobs = {j["job_name"] for j in yaml.safe_load(
        (DEPLOY / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]}
    assert {j["job_name"] for j in raw["scrape_configs"]} == compose_jobs  # one dashboard for both
    templates = pod_templates(rendered["base"])
    components = {t["metadata"]["labels"]["app.kubernetes.io/component"]: t for t in templates.values()}
    for job in raw["scrape_configs"]:
        [sd] = job["kubernetes_sd_configs"]
        assert sd["role"] == "pod" and sd["namespaces"]["names"] == ["sdedit"]
        keep = job["relabel_configs"][0]
        assert keep["action"] == "keep" and keep["source_labels"] == [
            "__meta_kubernetes_pod_label_app_kubernetes_io_component"]
        assert components[keep["regex"]]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        address = next(r for r in job["relabel_configs"] if r.get("target_label") == "__address__")
        # Prometheus anchors its regexes; Go's RE2 and Python agree on this one.
        match = re.fullmatch(address["regex"], "10.1.2.3:8000;9100")
        assert match and match.expand(address["replacement"].replace("$", "\\")) == "10.1.2.3:9100"


def dashboard_panels() -> list[dict[str, Any]]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def dashboard_queries() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p["targets"]]


def test_dashboard_is_well_formed():
    dashboard = json.loads(DASHBOARD.read_text())
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml")
                                .read_text())["datasources"][0]
    assert dashboard["uid"] and dashboard["title"]
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        mine = {(grid["x"] + dx, grid["y"] + dy) for dx in range(grid["w"]) for dy in range(grid["h"])}
        assert not mine & cells, f"panel {panel['title']!r} overlaps another"
        cells |= mine
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == datasource["uid"] and panel["targets"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"] and target["expr"].strip()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    [model] = dashboard["templating"]["list"]
    assert model["name"] == "model" and model["datasource"]["uid"] == datasource["uid"]


def test_dashboard_has_the_panels_the_issue_asks_for():
    queries = dashboard_queries()

    def uses(metric: str, also: str = "") -> bool:
        return any(metric in q and also in q for q in queries)

    assert uses("sdedit_queue_depth", "by (model)")                                # queue depth
    assert uses("sdedit_api_jobs_accepted_total", "rate(")                          # accepted/s
    assert uses("sdedit_worker_jobs_total", "outcome")                              # finished/failed
    assert uses("sdedit_worker_job_seconds_bucket", "histogram_quantile(0.5,")      # latency p50
    assert uses("sdedit_worker_job_seconds_bucket", "histogram_quantile(0.95,")     # latency p95
    assert uses("sdedit_worker_queue_wait_seconds_bucket", "histogram_quantile(")   # queue wait
    assert uses("sdedit_worker_batch_occupancy")                                    # occupancy
    assert uses("sdedit_worker_forwards_total", "rate(")                            # forwards/s
    assert uses("sdedit_worker_out_of_memory_total")                                # OOM retries
    assert "count(sdedit_worker_active_jobs)" in queries                            # worker count
    for query in queries:  # only the project's own metrics, so the topology test can check them
        assert METRIC.findall(query), query
