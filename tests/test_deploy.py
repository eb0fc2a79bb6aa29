"""The deployment files in deploy/: valid against a recent Kubernetes' schemas, offline, and
consistent with the server they run (its probes, ports, drain and user).

kubernetes-validate carries the API schemas of each Kubernetes release, so no cluster and no
network is needed. The ServiceMonitor is a custom resource (Prometheus Operator) whose schema it
does not carry: its fields that must match the Service are checked by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge_embed.service.settings import DRAIN_TIMEOUT_S, parse_settings
from tests.fixtures.deploy import yaml_docs
from tests.fixtures.server import ROOT

DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "kubernetes" / "base"
EXAMPLES = DEPLOY / "kubernetes" / "examples"
# The newest release whose schemas the pinned kubernetes-validate carries.
KUBERNETES_VERSION = "1.34.0"
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
PORT = 8000


def _manifests() -> list[Path]:
    return sorted([*BASE.glob("*.yaml"), *EXAMPLES.glob("*.yaml")])


def _resources(custom: bool = False) -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in _manifests() if p.name != "kustomization.yaml" for d in yaml_docs(p)
            if ((d["apiVersion"], d["kind"]) in CUSTOM_KINDS) == custom]


@pytest.mark.parametrize(("path", "resource"), _resources(),
                         ids=lambda v: v.name if isinstance(v, Path) else "")
def test_every_manifest_validates(path: Path, resource: dict[str, Any]) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def test_validation_catches_a_broken_manifest() -> None:
    import kubernetes_validate
    from kubernetes_validate.utils import ValidationError

    (wrong_type,) = yaml_docs(BASE / "deployment.yaml")
    wrong_type["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "x"
    with pytest.raises(ValidationError):
        kubernetes_validate.validate(wrong_type, KUBERNETES_VERSION, strict=True)
    (unknown_field,) = yaml_docs(BASE / "deployment.yaml")
    unknown_field["spec"]["replicaz"] = 2  # strict: a misspelt field is an error too
    with pytest.raises(ValidationError):
        kubernetes_validate.validate(unknown_field, KUBERNETES_VERSION, strict=True)


def test_only_custom_resources_go_unvalidated() -> None:
    assert [d["kind"] for _, d in _resources(custom=True)] == ["ServiceMonitor"]


def test_kustomization_lists_every_base_file() -> None:
    (kustomization,) = yaml_docs(BASE / "kustomization.yaml")
    listed = set(kustomization["resources"])
    present = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def _container(name: str = "edge-embed") -> dict[str, Any]:
    (deployment,) = yaml_docs(BASE / "deployment.yaml")
    spec = deployment["spec"]["template"]["spec"]
    return {"pod": spec, **next(c for c in spec["containers"] if c["name"] == name)}


def test_deployment_matches_the_server() -> None:
    c = _container()
    pod = c["pod"]
    assert c["startupProbe"]["httpGet"]["path"] == "/ready"
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["ports"][0]["containerPort"] == PORT
    security = c["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    # The read-only root keeps a writable /tmp.
    assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"])
    assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"]
    (configmap,) = yaml_docs(BASE / "configmap.yaml")
    env = configmap["data"]
    drain = float(env.get("EDGE_EMBED_DRAIN_TIMEOUT", DRAIN_TIMEOUT_S))
    assert pod["terminationGracePeriodSeconds"] > drain
    assert float(env["EDGE_EMBED_REQUEST_TIMEOUT"]) < drain


def test_configmap_is_what_the_server_accepts() -> None:
    """Every EDGE_EMBED_* the ConfigMap sets is a setting the server parses without error."""
    (configmap,) = yaml_docs(BASE / "configmap.yaml")
    env = {k: str(v) for k, v in configmap["data"].items()}
    assert all(k.startswith("EDGE_EMBED_") for k in env)
    settings = parse_settings([], environ=env)
    assert settings.host == "0.0.0.0" and settings.port == PORT
    assert settings.drain_timeout == float(env["EDGE_EMBED_DRAIN_TIMEOUT"])


def test_service_monitor_scrapes_the_service() -> None:
    (monitor,) = yaml_docs(EXAMPLES / "servicemonitor.yaml")
    (service,) = yaml_docs(BASE / "service.yaml")
    ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in ports and endpoint["path"] == "/metrics"


def test_compose_sidecar_shares_the_network_and_the_server_stays_on_loopback() -> None:
    (compose,) = yaml_docs(DEPLOY / "compose" / "compose.yaml")
    services = compose["services"]
    server, app = services["edge-embed"], services["app"]
    assert app["network_mode"] == "service:edge-embed"
    assert server["environment"]["EDGE_EMBED_HOST"] == "127.0.0.1"
    assert app["environment"]["OPENAI_BASE_URL"] == f"http://127.0.0.1:{PORT}/v1"
    assert server["read_only"] is True and not str(server["user"]).startswith("0")
