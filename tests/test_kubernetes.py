"""deploy/kubernetes/: valid against the Kubernetes schemas (kubernetes-validate,
strict: an unknown or misspelt field fails), configured with real settings,
probing the endpoints a real server answers, and with a termination grace
that covers the server's shutdown grace."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from hubbub.server.config import ConfigError, describe_settings, env_name, load_settings
from tests.conftest import RunningServer, http_get

MANIFESTS = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
RESOURCE_FILES = sorted(p for p in MANIFESTS.glob("*.yaml") if p.name != "kustomization.yaml")
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
"""The oldest minor release still commonly run by managed clusters, and the newest the library knows."""
SHUTDOWN_MARGIN_SECONDS = 3
"""At least this long between the end of the server's grace and SIGKILL (closing the stores)."""


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def resource(kind: str, name: str) -> dict[str, Any]:
    found = [d for p in RESOURCE_FILES for d in documents(p) if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} in deploy/kubernetes"
    return found[0]


def hubbub_container() -> dict[str, Any]:
    containers = resource("Deployment", "hubbub")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "hubbub")


def setting_default(field: str) -> Any:
    return next(default for env, _, default, _ in describe_settings() if env == env_name(field))


def replica_environment() -> dict[str, str]:
    """What a replica's envFrom gives it: the ConfigMap, then the Secret."""
    return {**resource("ConfigMap", "hubbub")["data"], **resource("Secret", "hubbub-secrets")["stringData"]}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", RESOURCE_FILES, ids=lambda p: p.name)
def test_manifest_is_valid_against_the_kubernetes_schema(path: Path, version: str) -> None:
    docs = documents(path)
    assert docs, f"{path.name} has no resource"
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_an_unknown_field_is_refused() -> None:
    # The strict validation above would catch a misspelt field: prove it can fail.
    service = resource("Service", "hubbub")
    broken = {**service, "spec": {**service["spec"], "selectr": {}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def test_kustomization_lists_every_resource_but_the_migration_job() -> None:
    listed = set(yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in RESOURCE_FILES} - {"migrate-job.yaml"}


def test_configmap_keys_are_settings_and_the_replica_environment_loads() -> None:
    config = resource("ConfigMap", "hubbub")["data"]
    known = {env for env, _, _, _ in describe_settings()}
    assert sorted(set(config) - known) == [], "ConfigMap keys that are not HUBBUB_* settings"
    assert sorted(set(resource("Secret", "hubbub-secrets")["stringData"]) - known) == []
    environment = replica_environment()
    with pytest.raises(ConfigError, match="placeholder"):  # nobody deploys the shipped secret by mistake
        load_settings(environment)
    settings = load_settings({**environment, "HUBBUB_JWT_SECRET": "a-real-secret-" + "x" * 32})
    assert settings.process.profile == "cloud"


def test_secrets_are_in_the_secret_only() -> None:
    secret_settings = {"HUBBUB_JWT_SECRET", "HUBBUB_POSTGRES_DSN", "HUBBUB_REDIS_URL"}
    assert secret_settings <= set(resource("Secret", "hubbub-secrets")["stringData"])
    assert not secret_settings & set(resource("ConfigMap", "hubbub")["data"])
    sources = hubbub_container()["envFrom"]
    assert {"secretRef": {"name": "hubbub-secrets"}} in sources
    assert {"configMapRef": {"name": "hubbub"}} in sources


def test_probes_and_service_use_the_server_port() -> None:
    container = hubbub_container()
    (port,) = container["ports"]
    assert port["containerPort"] == int(replica_environment()["HUBBUB_PORT"]) == setting_default("port")
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in (port["name"], port["containerPort"]), probe
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    (service_port,) = resource("Service", "hubbub")["spec"]["ports"]
    assert service_port["targetPort"] in (port["name"], port["containerPort"])


async def test_probe_paths_answer_200_on_a_real_server(server: RunningServer) -> None:
    container = hubbub_container()
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        path = container[probe]["httpGet"]["path"]
        status, _ = await asyncio.to_thread(http_get, server.http_url + path)
        assert status == 200, f"{probe} {path}"


def test_selectors_match_the_replicas_only() -> None:
    deployment = resource("Deployment", "hubbub")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (
        deployment["spec"]["selector"]["matchLabels"],
        resource("PodDisruptionBudget", "hubbub")["spec"]["selector"]["matchLabels"],
        resource("Service", "hubbub")["spec"]["selector"],
    ):
        assert selector.items() <= pod_labels.items()
    migrate_labels = resource("Job", "hubbub-migrate")["spec"]["template"]["metadata"]["labels"]
    assert not resource("Service", "hubbub")["spec"]["selector"].items() <= migrate_labels.items()


def test_termination_grace_covers_prestop_and_shutdown_grace() -> None:
    pod = resource("Deployment", "hubbub")["spec"]["template"]["spec"]
    command = hubbub_container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    grace = float(replica_environment().get("HUBBUB_SHUTDOWN_GRACE_SECONDS", setting_default("shutdown_grace_seconds")))
    assert grace == setting_default("shutdown_grace_seconds"), "configmap.yaml departs from the default: recheck"
    needed = float(command[1]) + grace + SHUTDOWN_MARGIN_SECONDS
    assert pod["terminationGracePeriodSeconds"] >= needed


def test_every_container_requests_resources() -> None:
    for kind, name in (("Deployment", "hubbub"), ("Job", "hubbub-migrate")):
        for container in resource(kind, name)["spec"]["template"]["spec"]["containers"]:
            requests = container["resources"]["requests"]
            assert {"cpu", "memory"} <= requests.keys(), f"{kind}/{name} {container['name']}"
