"""The GPU stack's files: schema-valid (real validators), one release, consistent wiring.

Docker cannot run here, so what can be checked without it is checked hard: the compose
file against the compose-spec schema (check-jsonschema's vendored copy), every Kubernetes
manifest against the Kubernetes schemas in strict mode (kubernetes-validate: unknown
fields fail), the image tags after compose's own variable interpolation, and that every
scrape target, datasource and dashboard reference points at something that exists.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from repo_manager.compat import TRITON_TENSORRT
from tests.dashboard import UnknownFunctionError, dashboard_metrics, metric_names

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "deploy" / "k8s"
#: The Kubernetes release the manifests are validated against (schemas bundled offline).
KUBERNETES = "1.30"
CHECK_JSONSCHEMA = str(Path(sys.executable).parent / "check-jsonschema")


def dotenv() -> dict[str, str]:
    pairs = {}
    for line in (ROOT / ".env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            pairs[name.strip()] = value.strip()
    return pairs


_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?::?([-?])([^}]*))?\}|\$(\w+)")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation: ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}``, ``$$``."""

    def value(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        if env.get(name):
            return env[name]
        if match.group(2) == "?":
            raise AssertionError(f"{name} unset: {match.group(3)}")
        return match.group(3) or ""

    return _VARIABLE.sub(value, text)


#: What a user adds to .env before the first ``docker compose up`` (the file ships without).
USER_ENV = {"REPO_MANAGER_CONTROL_KEY": "k3y-from-the-users-env-file"}


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    """The compose file as ``docker compose config`` sees it: parsed, then interpolated
    (by default with the shipped .env plus what the user must add, ``USER_ENV``)."""
    values = {**dotenv(), **USER_ENV} if env is None else env

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            return interpolate(node, values)
        if isinstance(node, list):
            return [walk(item) for item in node]
        if isinstance(node, dict):
            return {key: walk(item) for key, item in node.items()}
        return node

    document: dict[str, Any] = walk(yaml.safe_load(COMPOSE.read_text()))
    return document


def manifests() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def run_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHECK_JSONSCHEMA, "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


# -- real validators ------------------------------------------------------------------------


def test_the_compose_file_is_valid_against_the_compose_spec_schema() -> None:
    done = run_compose_schema(COMPOSE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_compose_schema_check_catches_a_misspelt_field(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("    healthcheck:", "    healtcheck:", 1))
    done = run_compose_schema(broken)
    assert done.returncode == 1 and "'healtcheck' was unexpected" in done.stdout


@pytest.mark.parametrize(
    "name,document", manifests(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_kubernetes_manifest_is_valid_in_strict_mode(name: str, document: Any) -> None:
    assert kubernetes_validate.validate(document, KUBERNETES, strict=True) == KUBERNETES


def test_the_kubernetes_validator_catches_a_misspelt_field() -> None:
    document = yaml.safe_load((K8S / "manager-deployment.yaml").read_text())
    container = document["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="'readinesProbe' was unexpected"):
        kubernetes_validate.validate(document, KUBERNETES, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(listed) == sorted(on_disk)


# -- one release ------------------------------------------------------------------------------


_NGC_TAG = re.compile(r"^nvcr\.io/nvidia/(tritonserver|tensorrt):(\d\d\.\d\d)-py3$")


def image_releases(services: dict[str, Any]) -> dict[str, str]:
    """The NGC release of the triton image and of the exporter's base image (its
    Dockerfile's FROM, resolved with the build args as docker build resolves it)."""
    build = services["exporter"]["build"]
    dockerfile = (ROOT / build["context"] / build["dockerfile"]).read_text()
    base = re.search(r"^FROM\s+(\S+)", dockerfile, re.MULTILINE)
    assert base is not None
    tags = {
        "triton": services["triton"]["image"],
        "exporter": interpolate(base.group(1), build["args"]),
    }
    releases = {}
    for role, tag in tags.items():
        match = _NGC_TAG.match(tag)
        assert match is not None, f"{role} image {tag} is not an NGC release tag"
        assert match.group(1) == ("tritonserver" if role == "triton" else "tensorrt"), tag
        releases[role] = match.group(2)
    return releases


def test_triton_and_exporter_images_name_the_same_release_known_to_the_compat_table() -> None:
    services = compose()["services"]
    release = dotenv()["TRITON_RELEASE"]
    assert image_releases(services) == {"triton": release, "exporter": release}
    assert (
        services["exporter"]["image"] == services["manager"]["image"] == f"repo-manager:{release}"
    )
    # Plans built by the exporter pass publish's guard against this server's version.
    assert release in {ngc for ngc, _tensorrt in TRITON_TENSORRT.values()}
    # Kubernetes runs the same release.
    images = {
        c["image"]
        for _name, doc in manifests()
        if doc["kind"] in ("StatefulSet", "Deployment")
        for c in (
            doc["spec"]["template"]["spec"]["containers"]
            + doc["spec"]["template"]["spec"].get("initContainers", [])
        )
    }
    assert images == {f"nvcr.io/nvidia/tritonserver:{release}-py3", f"repo-manager:{release}"}


def test_the_release_check_sees_an_exporter_built_from_another_release() -> None:
    services = compose()["services"]
    services["exporter"]["build"]["args"]["TRITON_RELEASE"] = "24.08"
    releases = image_releases(services)
    assert releases["exporter"] == "24.08" != releases["triton"]
    with pytest.raises(AssertionError, match="TRITON_RELEASE unset"):
        compose({})  # no .env: compose refuses to start rather than guess a release


# -- wiring -------------------------------------------------------------------------------------


def _container_ports(service: dict[str, Any]) -> set[int]:
    return {int(str(p).split(":")[-1].split("/")[0]) for p in service.get("ports", [])}


def test_every_prometheus_target_is_a_compose_service_serving_that_port() -> None:
    services = compose()["services"]
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert {"triton", "manager", "router"} <= jobs
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            for target in static["targets"]:
                host, _, port = target.partition(":")
                assert host in services, f"{job['job_name']}: no service {host}"
                service = services[host]
                assert int(port) in _container_ports(service), target
                command = " ".join(map(str, service.get("command", [])))
                assert f"-port={port}" in command, f"{host} does not listen on {port}"


def test_grafana_reads_the_compose_prometheus_with_the_datasource_the_dashboard_names() -> None:
    services = compose()["services"]
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    source = sources["datasources"][0]
    assert source["url"] == "http://prometheus:9090" and 9090 in _container_ports(
        services["prometheus"]
    )
    providers = yaml.safe_load((provisioning / "dashboards" / "repo-manager.yml").read_text())
    mounted = {v.split(":")[1] for v in services["grafana"]["volumes"]}
    assert providers["providers"][0]["options"]["path"] in mounted
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/repo-manager.json").read_text())
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
    assert uids == {source["uid"]}


def test_the_manager_in_kubernetes_addresses_the_headless_service_as_a_dns_fleet() -> None:
    docs = {doc["metadata"]["name"] + "/" + doc["kind"]: doc for _n, doc in manifests()}
    service = docs["triton-headless/Service"]
    assert service["spec"]["clusterIP"] == "None"
    triton = docs["triton/StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
    assert "--model-control-mode=explicit" in triton["args"]
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    manager = docs["repo-manager/Deployment"]
    assert manager["spec"]["replicas"] == 1
    container = manager["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["reconcile", "--watch"]
    env = {e["name"]: e for e in container["env"]}
    namespace = service["metadata"]["namespace"]
    grpc = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert env["TRITON_URL"]["value"] == (
        f"dns://{service['metadata']['name']}.{namespace}.svc.cluster.local:{grpc}"
    )
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "repo-manager-s3"


# -- the dashboard's query parser (the live check is in tests/integration) -----------------------


def test_metric_names_are_what_queries_select_not_labels_functions_or_variables() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (version, le) (rate(repo_manager_router_latency_"
        'seconds_bucket{model=~"$model", outcome!="x"}[$__rate_interval]))) / on (version) '
        "group_left sum without (instance) (nv_inference_count offset 5m) > bool 1e3"
    )
    assert metric_names(expr) == {
        "repo_manager_router_latency_seconds_bucket",
        "nv_inference_count",
    }
    assert metric_names("time() - repo_manager_reconcile_last_success_timestamp_seconds") == {
        "repo_manager_reconcile_last_success_timestamp_seconds"
    }


def test_a_typo_in_a_function_or_a_metric_is_caught() -> None:
    with pytest.raises(UnknownFunctionError, match="rat"):
        metric_names("rat(nv_inference_count[1m])")
    dashboard = {
        "panels": [{"targets": [{"expr": "sum(rate(repo_manager_router_request_total[1m]))"}]}],
        "templating": {"list": [{"query": {"query": "label_values(repo_manager_weight, model)"}}]},
    }
    exported = {"repo_manager_router_requests_total", "repo_manager_canary_weight"}
    assert dashboard_metrics(dashboard) - exported == {
        "repo_manager_router_request_total",
        "repo_manager_weight",
    }


# -- the repository is servable before any tritonserver starts -------------------------------


def test_kubernetes_tritonservers_start_only_after_the_repository_init_step() -> None:
    docs = {doc["metadata"]["name"] + "/" + doc["kind"]: doc for _n, doc in manifests()}
    pod = docs["triton/StatefulSet"]["spec"]["template"]["spec"]
    manager = docs["repo-manager/Deployment"]["spec"]["template"]["spec"]["containers"][0]
    init = [c for c in pod.get("initContainers", []) if c.get("args") == ["init"]]
    assert len(init) == 1, "no initContainer runs `repo-manager init` before tritonserver"
    step = init[0]
    triton = pod["containers"][0]
    # The manager's image and the same repository, endpoint and credentials as tritonserver.
    assert step["image"] == manager["image"]
    assert step["envFrom"] == triton["envFrom"] == manager["envFrom"]
    triton_env = {e["name"]: e for e in triton["env"]}
    assert all(triton_env.get(e["name"]) == e for e in step["env"])  # the same credentials
    config = docs["repo-manager-s3/ConfigMap"]["data"]
    bucket_prefix = config["REPO_MANAGER_REPOSITORY"].removeprefix("s3://")
    assert config["TRITON_MODEL_REPOSITORY"] == (
        f"s3://{config['AWS_ENDPOINT_URL'].rstrip('/')}/{bucket_prefix}"
    )


def test_compose_triton_starts_only_after_the_repository_init_step() -> None:
    services = compose()["services"]
    assert services["init"]["command"] == ["init"]
    assert services["init"]["image"] == services["manager"]["image"]
    assert services["init"]["environment"] == services["manager"]["environment"]
    assert services["init"]["volumes"] == services["manager"]["volumes"]
    assert services["triton"]["depends_on"]["init"] == {
        "condition": "service_completed_successfully"
    }
    # With the s3 profile, init runs once the bucket exists; without it, alone.
    assert services["init"]["depends_on"]["minio-setup"] == {
        "condition": "service_completed_successfully",
        "required": False,
    }
    # One rule in one place: the marker is init's to write, not a shell line's.
    setup = " ".join(services["minio-setup"]["command"])
    assert "mc mb" in setup and ".repo-manager.keep" not in setup


# -- Routers follow the manager's watch endpoint -----------------------------------------------


def test_compose_clients_are_told_the_watch_url_the_manager_serves() -> None:
    from urllib.parse import urlsplit

    services = compose()["services"]
    watch = urlsplit(services["loadgen"]["environment"]["REPO_MANAGER_WATCH_URL"])
    assert watch.scheme == "http" and watch.hostname == "manager"
    manager = services["manager"]
    assert manager["command"][:2] == ["reconcile", "--watch"]
    assert f"--metrics-port={watch.port}" in manager["command"]
    assert "--metrics-addr=0.0.0.0" in manager["command"]
    assert watch.port in _container_ports(manager)


def test_kubernetes_clients_are_told_the_watch_url_of_the_manager_service() -> None:
    from urllib.parse import urlsplit

    docs = {doc["metadata"]["name"] + "/" + doc["kind"]: doc for _n, doc in manifests()}
    watch = urlsplit(docs["repo-manager-s3/ConfigMap"]["data"]["REPO_MANAGER_WATCH_URL"])
    service = docs["repo-manager/Service"]
    name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
    assert watch.scheme == "http"
    assert watch.hostname == f"{name}.{namespace}.svc.cluster.local"
    port = next(p for p in service["spec"]["ports"] if p["port"] == watch.port)
    deployment = docs["repo-manager/Deployment"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    served = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert f"--metrics-port={served[port['targetPort']]}" in container["args"]
    assert "--metrics-addr=0.0.0.0" in container["args"]


# -- a locked control plane ----------------------------------------------------------------------


def test_compose_refuses_to_start_without_a_control_key() -> None:
    with pytest.raises(AssertionError, match="REPO_MANAGER_CONTROL_KEY unset"):
        compose(dotenv())  # the .env as shipped: no key, so no stack at all


def test_compose_triton_serves_model_control_only_to_callers_with_the_key() -> None:
    from repo_manager.transport import CONTROL_KEY_ENV, restricted_flags

    services = compose()["services"]
    key = USER_ENV[CONTROL_KEY_ENV]
    command = services["triton"]["command"]
    assert [a for a in command if "restricted" in a] == restricted_flags(key)
    # The manager (and every client of the image: init, exporter, loadgen) sends it.
    for name in ("manager", "exporter", "loadgen", "init"):
        assert services[name]["environment"][CONTROL_KEY_ENV] == key
    assert "--model-control-mode=explicit" in command


def test_kubernetes_tritonservers_serve_model_control_only_with_the_secret_key() -> None:
    from repo_manager.transport import CONTROL_KEY_ENV, restricted_flags

    docs = {doc["metadata"]["name"] + "/" + doc["kind"]: doc for _n, doc in manifests()}
    triton = docs["triton/StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
    manager = docs["repo-manager/Deployment"]["spec"]["template"]["spec"]["containers"][0]
    # Kubernetes expands $(VAR) in args from the container's env: the Secret's key.
    flags = [a for a in triton["args"] if "restricted" in a]
    assert flags == restricted_flags(f"$({CONTROL_KEY_ENV})")
    from_secret = {
        "name": CONTROL_KEY_ENV,
        "valueFrom": {"secretKeyRef": {"name": "repo-manager-control", "key": CONTROL_KEY_ENV}},
    }
    assert from_secret in triton["env"] and from_secret in manager["env"]


def test_compose_publishes_every_port_on_loopback_unless_told_otherwise() -> None:
    for env, address in (
        (None, "127.0.0.1"),
        ({**dotenv(), **USER_ENV, "PUBLISH_ADDR": "0.0.0.0"}, "0.0.0.0"),
    ):
        services = compose(env)["services"]
        published = [str(p) for s in services.values() for p in s.get("ports", [])]
        assert published and all(p.startswith(f"{address}:") for p in published), published


def test_compose_has_no_default_secret_and_no_prometheus_lifecycle_api() -> None:
    text = COMPOSE.read_text()
    assert "minioadmin" not in text
    services = compose()["services"]
    # Unset in the shipped .env: MinIO refuses to start without a password of its own.
    assert services["minio"]["environment"]["MINIO_ROOT_PASSWORD"] == ""
    assert "${AWS_SECRET_ACCESS_KEY:-}" in text
    assert not any("lifecycle" in a for a in services["prometheus"]["command"])
