"""The deployment files in deploy/: valid against a recent Kubernetes' schemas, offline, and
consistent with the server they run (its probes, ports, drain and user).

kubernetes-validate carries the API schemas of each Kubernetes release, so no cluster and no
network is needed. The ServiceMonitor is a custom resource (Prometheus Operator) whose schema it
does not carry: its fields that must match the Service are checked by hand.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edge_embed.service.address import is_loopback
from edge_embed.service.app import build_authenticator
from edge_embed.service.errors import ApiKeyError
from edge_embed.service.healthcheck import TIMEOUT_S
from edge_embed.service.settings import DRAIN_TIMEOUT_S, parse_settings
from tests.fixtures.deploy import yaml_docs
from tests.fixtures.server import ROOT, live_server

DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "kubernetes" / "base"
EXAMPLES = DEPLOY / "kubernetes" / "examples"
# The newest release whose schemas the pinned kubernetes-validate carries.
KUBERNETES_VERSION = "1.34.0"
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
PORT = 8000
# The Secret the base takes its API keys from, and the label that lets a pod reach the server;
# both are the user's to create or set, so README must name them.
SECRET = "edge-embed-api-keys"
CLIENT_LABEL = "edge-embed/client"
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")
# The health check's own run (a Python start) on a loaded machine.
PROBE_RUN_TIMEOUT_S = 60


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


def _readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def test_api_keys_come_from_a_secret() -> None:
    c = _container()
    env = {e["name"]: e for e in c.get("env", [])}
    ref = env["EDGE_EMBED_API_KEY"]["valueFrom"]["secretKeyRef"]
    # not optional: a missing Secret stops the pod from starting instead of serving without keys
    assert ref["name"] == SECRET and not ref.get("optional", False)
    readme = _readme()
    assert f"kubectl create secret generic {SECRET}" in readme, "README: how to create it"
    assert f"--from-literal={ref['key']}=" in readme and "secretGenerator" in readme
    (configmap,) = _docs(BASE / "configmap.yaml")
    env_vars = {k: str(v) for k, v in configmap["data"].items()}
    assert "EDGE_EMBED_API_KEY" not in env_vars  # never in a ConfigMap
    # what the Secret holds is what the server reads: comma-separated keys, each checked
    keys = "sk-" + "a" * 32 + ",sk-" + "b" * 32
    auth = build_authenticator(parse_settings([], environ={**env_vars,
                                                           "EDGE_EMBED_API_KEY": keys}))
    assert auth.enabled and len(auth) == 2
    with pytest.raises(ApiKeyError):
        build_authenticator(parse_settings([], environ={**env_vars, "EDGE_EMBED_API_KEY": ""}))


def test_network_policy_admits_only_labelled_clients() -> None:
    (policy,) = _docs(BASE / "networkpolicy.yaml")
    pod = _container()["pod"]
    (deployment,) = _docs(BASE / "deployment.yaml")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}, "no ipBlock or namespaceSelector: labelled pods only"
    # an expression, not matchLabels: kustomize adds its common labels to matchLabels selectors
    assert set(peer["podSelector"]) == {"matchExpressions"}
    assert peer["podSelector"]["matchExpressions"] == [
        {"key": CLIENT_LABEL, "operator": "In", "values": ["true"]}]
    ports = {p["name"] for c in pod["containers"] for p in c["ports"]}
    assert [p["port"] for p in rule["ports"]] == ["http"] and "http" in ports
    assert f'{CLIENT_LABEL}: "true"' in _readme(), "README: the label clients need"


def _every_container() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path, doc in _resources():
        template = doc.get("spec", {}).get("template", {}).get("spec", {})
        out += [(path, c) for c in template.get("containers", [])]
    return out


def test_no_http_probe_names_a_host() -> None:
    """An httpGet probe's `host` is dialled from the node: 127.0.0.1 there is the node."""
    probes = [(path.name, c["name"], c[kind]) for path, c in _every_container()
              for kind in PROBES if kind in c]
    assert len(probes) >= 6
    for where in probes:
        assert "host" not in where[2].get("httpGet", {}), where


def test_sidecar_probes_reach_a_loopback_server(tiny_bundle: Path) -> None:
    (deployment,) = _docs(EXAMPLES / "sidecar.yaml")
    (c,) = [c for c in deployment["spec"]["template"]["spec"]["containers"]
            if c["name"] == "edge-embed"]
    env = {e["name"]: str(e["value"]) for e in c["env"]}
    assert is_loopback(env["EDGE_EMBED_HOST"])
    commands = []
    for kind in PROBES:
        probe = c[kind]
        assert set(probe) & {"httpGet", "tcpSocket", "grpc"} == set(), (kind, probe)
        command = probe["exec"]["command"]
        assert command[:3] == ["python", "-m", "edge_embed.service.healthcheck"], command
        assert probe["timeoutSeconds"] > TIMEOUT_S, "the check's own timeout must come first"
        commands.append(command)
    assert ["python", "-m", "edge_embed.service.healthcheck"] in commands  # liveness: /health

    def run(command: list[str], port: int) -> int:
        return subprocess.run([sys.executable, *command[1:]], cwd=ROOT, capture_output=True,
                              env={**env, "EDGE_EMBED_PORT": str(port)},
                              timeout=PROBE_RUN_TIMEOUT_S).returncode

    # the commands as the kubelet runs them in the container, against a server bound as there
    # (on loopback), with keys on: the probes carry none and still pass
    with live_server([tiny_bundle], ["--api-key", "sk-" + "c" * 32]) as live:
        port = live.port
        assert [run(command, port) for command in commands] == [0] * len(commands)
    assert [run(command, port) for command in commands] == [1] * len(commands)
